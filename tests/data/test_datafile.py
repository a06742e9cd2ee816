"""One setting in one file: export-data writes it, data_root=FILE.npz reads it back bit for bit or refuses it."""

import json
import zipfile

import numpy as np
import pytest

from mmlib.__main__ import main
from mmlib.config import RunConfig
from mmlib.data import datafile, sources
from mmlib.data.sources import load_dataset
from mmlib.sweep import plan
from mmlib.train import trainer

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels", "indices")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """digits, long-tailed 10, rand_number 3, written by the command line."""
    path = tmp_path_factory.mktemp("export") / "digits-exp-10.npz"
    assert main(["export-data", "--dataset", "digits", "--imb-type", "exp", "--ratio", "10", "--rand-number", "3",
                 "--out", str(path)]) == 0
    return path


def test_round_trip_is_bit_identical(exported):
    original = load_dataset("digits", imb_type="exp", ratio=10.0, rand_number=3)
    read = load_dataset("digits", exported, "exp", 10.0, 3)
    for name in ARRAYS:
        a, b = getattr(original, name), getattr(read, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    assert (read.classes, read.cls_num_list, read.groups) == (original.classes, original.cls_num_list, original.groups)
    assert (read.name, read.imb_type, read.ratio, read.rand_number) == ("digits", "exp", 10.0, 3)
    assert str(exported) in read.source and original.source in read.source


def test_mosaic_keeps_every_pixel_of_several_rows():
    """600 random images: three mosaic rows, the last one padded; random pixels leave WebP nothing to smooth."""
    images = np.random.default_rng(0).integers(0, 256, (600, 32, 32, 3), dtype=np.uint8)
    decoded = datafile.decode_mosaic(datafile.encode_mosaic(images), list(images.shape))
    assert np.array_equal(decoded, images)


@pytest.mark.parametrize("setting, named", [
    (("digits", "step", 10.0, 3), "imb_type 'exp'"),
    (("digits", "exp", 5.0, 3), "ratio 10.0"),
    (("digits", "exp", 10.0, 0), "rand_number 3"),
    (("cifar10", "exp", 10.0, 3), "name 'digits'"),
])
def test_refuses_another_setting(exported, setting, named):
    with pytest.raises(ValueError, match=f"holds another setting: {named}"):
        load_dataset(setting[0], exported, *setting[1:])


def test_refuses_a_changed_array(exported, tmp_path):
    """One label changed, the metadata kept: the checksum names the array."""
    with np.load(exported) as stored:
        arrays = {key: stored[key] for key in stored.files}
    arrays["train_labels"] = arrays["train_labels"].copy()
    arrays["train_labels"][0] = (arrays["train_labels"][0] + 1) % 10
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(ValueError, match=r"damaged: train_labels do not match their checksums"):
        load_dataset("digits", tampered, "exp", 10.0, 3)


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "no metadata"])
def test_refuses_an_unreadable_file(exported, tmp_path, damage):
    broken = tmp_path / "broken.npz"
    content = exported.read_bytes()
    if damage == "truncated":
        broken.write_bytes(content[: len(content) // 2])
    elif damage == "random bytes":
        broken.write_bytes(np.random.default_rng(1).bytes(4096))
    else:
        with zipfile.ZipFile(exported) as source, zipfile.ZipFile(broken, "w") as target:
            for item in source.namelist():
                if item != "meta.npy":
                    target.writestr(item, source.read(item))
    with pytest.raises(ValueError, match=rf"dataset file {broken} is unreadable .*export-data"):
        load_dataset("digits", broken, "exp", 10.0, 3)


def test_refuses_a_foreign_format(exported, tmp_path):
    with np.load(exported) as stored:
        arrays = {key: stored[key] for key in stored.files}
    meta = json.loads(arrays["meta"].tobytes())
    arrays["meta"] = np.frombuffer(json.dumps({**meta, "format": "something else"}).encode(), dtype=np.uint8)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, **arrays)
    with pytest.raises(ValueError, match="is not an mmlib dataset file v1 file"):
        load_dataset("digits", foreign, "exp", 10.0, 3)


def test_a_missing_file_fails_before_anything_is_written(tmp_path):
    config = RunConfig(dataset="digits", data_root=str(tmp_path / "absent.npz"))  # parameters, not their data
    for check in (sources.check, lambda c: trainer.train(c, tmp_path / "r")):
        with pytest.raises(FileNotFoundError, match="does not exist; write it with `python -m mmlib export-data"):
            check(config)
    assert not (tmp_path / "r").exists()


def test_command_line_errors_name_the_option(tmp_path, capsys):
    assert main(["export-data", "--dataset", "digits", "--out", str(tmp_path / "x.npy")]) == 2
    assert "--out" in capsys.readouterr().err and not (tmp_path / "x.npy").exists()
    assert main(["export-data", "--dataset", "cifar10", "--data-root", str(tmp_path / "none"),
                 "--out", str(tmp_path / "c.npz")]) == 3
    assert "does not exist" in (err := capsys.readouterr().err) and "pass --download" in err and not (tmp_path / "c.npz").exists()


def test_a_run_from_the_file_equals_a_run_from_the_source(exported, tmp_path):
    params = dict(method="erm", dataset="digits", imb_type="exp", ratio=10.0, rand_number=3, arch="resnet8", epochs=1,
                  batch_size=128, quiet=True)
    direct = trainer.train(params, tmp_path / "direct")
    from_file = trainer.train({**params, "data_root": str(exported)}, tmp_path / "file")
    assert from_file["final"] == direct["final"]
    assert [h["train_loss"] for h in from_file["history"]] == [h["train_loss"] for h in direct["history"]]


def test_sweeps_take_a_file_per_setting(tmp_path):
    roots = plan.parse_data_roots(["/all", "cifar10=/c10", "cifar10-exp-100=/lt100.npz"])
    assert roots == {None: "/all", "cifar10": "/c10", "cifar10-exp-100": "/lt100.npz"}
    (tmp_path / "all").mkdir()
    (tmp_path / "c10").mkdir()
    (tmp_path / "lt100.npz").touch()  # only its existence is checked when planning
    roots = {key: str(tmp_path / value.lstrip("/")) for key, value in roots.items()}
    jobs = plan.plan("table1", tmp_path / "runs", methods=["erm"], data_roots=roots).jobs
    by_setting = {job.labels[0].split()[1]: job.params[0]["data_root"] for job in jobs}
    assert by_setting["cifar10-exp-100"] == str(tmp_path / "lt100.npz")
    assert by_setting["cifar10-exp-10"] == str(tmp_path / "c10")
    assert by_setting["cifar100-exp-100"] == str(tmp_path / "all")
