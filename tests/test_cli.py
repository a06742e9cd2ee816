"""The command line as a newcomer meets it: messages that name the command's own options, finished runs, --set, the cache."""

import json
import os
import subprocess
import sys

import pytest

from mmlib.sweep import plan


def mmlib(*args, cache):
    """python -m mmlib ARGS with its own cache folder."""
    return subprocess.run([sys.executable, "-m", "mmlib", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "MMLIB_CACHE": str(cache), "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_missing_data_names_the_download_option_of_the_command(tmp_path):
    train = mmlib("train", "--run-dir", tmp_path / "r", "--dataset", "cifar10", "--data-root", tmp_path / "none",
                  cache=tmp_path)
    assert train.returncode == 3 and train.stderr.startswith(f"error: data root {tmp_path / 'none'} does not exist.")
    assert "To get the data, pass --download, or point the data root at an existing copy." in train.stderr
    sweep = mmlib("sweep", "table1", "--out", tmp_path, "--dry-run", cache=tmp_path)
    assert sweep.returncode == 3 and sweep.stderr.startswith("error: no data root given")  # 3: missing data
    assert "To get the data, pass --set download=True, or point the data root at an existing copy." in sweep.stderr
    assert "unrecognized arguments" not in mmlib("sweep", "table1", "--out", tmp_path, "--dry-run", "--data-root",
                                                 tmp_path / "none", "--set", "download=True", cache=tmp_path).stderr


@pytest.mark.slow
def test_training_a_finished_run_again_says_so_and_how_to_start_over(tmp_path):
    args = ["train", "--run-dir", tmp_path / "r", "--dataset", "digits", "--ratio", "10", "--arch", "resnet8",
            "--epochs", "1", "--method", "erm", "--quiet"]
    first = mmlib(*args, cache=tmp_path)
    assert first.returncode == 0 and "finished run" not in first.stderr
    again = mmlib(*args, cache=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(first.stdout)
    assert again.stderr.strip() == (f"note: {tmp_path / 'r'} holds a finished run, so nothing was trained; its results "
                                    f"follow. To train again, give another --run-dir or delete {tmp_path / 'r'}.")


def quick_plan(tmp_path, **overrides):
    return plan.plan("quick", tmp_path, [0], ["digits-exp-10"], ["mm-drw"], overrides={"epochs": 2, **overrides})


def test_every_set_key_that_is_a_run_parameter_works(tmp_path):
    (job,) = quick_plan(tmp_path, quiet=False, data_seed=7, bf16=True, download=True).jobs
    assert {k: job.params[0][k] for k in ("quiet", "data_seed", "bf16", "download")} == {
        "quiet": False, "data_seed": 7, "bf16": True, "download": True}
    (job,) = quick_plan(tmp_path).jobs
    assert job.params[0]["quiet"] is True  # the sweep's default: notebooks run headless


@pytest.mark.parametrize("key, message", [
    ("seed", "--set seed: the sweep sets seed for every run; use --seeds"),
    ("data_root", "--set data_root: the sweep sets data_root for every run; use --data-root"),
    ("run_dir", "--set run_dir: the sweep sets run_dir for every run; use --out"),
    ("method", "--set method: the table's cells set method themselves; choose them with --methods"),
    ("beta", "--set beta: the table's cells set beta themselves"),
    ("epoch", "--set epoch: unknown parameter (did you mean epochs?); "
              "python -m mmlib train --help lists the run parameters"),
])
def test_set_keys_the_sweep_owns_or_that_do_not_exist_are_refused(tmp_path, key, message):
    with pytest.raises(ValueError) as error:
        quick_plan(tmp_path, **{key: 1})
    assert str(error.value) == message
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_set_quiet_through_the_command_line(tmp_path):
    done = mmlib("sweep", "quick", "--settings", "digits-exp-10", "--methods", "erm", "--out", tmp_path, "--dry-run",
                 "--set", "quiet=True", "--set", "seed=3", cache=tmp_path)
    assert done.returncode == 2 and done.stderr == "error: --set seed: the sweep sets seed for every run; use --seeds\n"
    done = mmlib("sweep", "quick", "--settings", "digits-exp-10", "--methods", "erm", "--out", tmp_path, "--dry-run",
                 "--set", "quiet=false", cache=tmp_path)  # a boolean as the shell writes it
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "quick: 1 runs to do in 1 notebooks, 0 finished runs skipped"
    done = mmlib("sweep", "quick", "--epochs", "3", "--set", "epochs=4", "--out", tmp_path, "--dry-run", cache=tmp_path)
    assert done.stderr == "error: --epochs 3 and --set epochs=4 disagree: give one\n"


def test_cache_lists_and_clears_only_mmlibs_entries(tmp_path):
    cache = tmp_path / "cache"
    (cache / "ssp" / "abc").mkdir(parents=True)
    (cache / "ssp" / "abc" / "backbone.pt").write_bytes(b"x" * 2_000_000)
    (cache / "imagefolder-0123.npz").write_bytes(b"y" * 3_000_000)
    (cache / "notes.txt").write_text("not mmlib's")
    listed = mmlib("cache", cache=cache)
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == [
        f"      3.0 MB  {cache / 'imagefolder-0123.npz'}  (decoded image folder of a folder not seen lately)",
        f"      2.0 MB  {cache / 'ssp' / 'abc'}  (ldam-drw-ssp pre-trained backbone)",
        f"in {cache}: 2 entries, 5.0 MB; python -m mmlib cache --clear deletes them",
    ]
    cleared = mmlib("cache", "--clear", cache=cache)
    assert cleared.stdout.splitlines()[-1] == f"deleted {cache}: 2 entries, 5.0 MB"
    assert sorted(p.name for p in cache.rglob("*")) == ["notes.txt", "ssp"]
    assert str(cache) in "".join(mmlib("cache", "--help", cache=cache).stdout.split())  # argparse wraps lines
    assert "python -m mmlib cache --clear deletes them" in mmlib("train", "--help", cache=cache).stdout


def test_a_reader_that_leaves_early_ends_the_listing_quietly(tmp_path):
    """python -m mmlib list table1 | head: the pipe (made small, 4 KiB) closes after the first line."""
    import fcntl

    read, write = os.pipe()
    fcntl.fcntl(read, 1031, 4096)  # F_SETPIPE_SZ: the listing no longer fits in the pipe at once
    listing = subprocess.Popen([sys.executable, "-m", "mmlib", "list", "table1"], stdout=write, stderr=subprocess.PIPE,
                               text=True)
    os.close(write)
    with os.fdopen(read) as pipe:
        assert pipe.readline().startswith("table1\tcifar10-exp-100\term\t")
    assert listing.wait() == 0 and listing.stderr.read() == ""
