"""sweep --backend ray on a local Ray instance (2 CPUs): the local backend's results, skip / resume /
isolate, no shared filesystem, a killed worker; and the option checks, which need no Ray."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
import torch

from mmlib import files
from mmlib.sweep import plan
from mmlib.sweep.local_executor import LocalExecutor
from mmlib.train import run_folder, trainer

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='Ray is an optional extra: pip install -e ".[ray]" (CI installs it)')
TINY = {"arch": "resnet8", "epochs": 2, "checkpoint_every": 1}  # a checkpoint each epoch: runs resume mid-way
ERM = dict(settings=["digits-step-10"], methods=["erm"], overrides=TINY)


def on_ray(out, **options):
    """The Ray executor for a sweep into ``out`` (imported only where Ray is installed), its jobs on the python
    runner unless asked: they start faster than a notebook's kernel, and run the same training."""
    from mmlib.sweep.ray_executor import RayExecutor

    return RayExecutor(out, **{"runner": "python", **options})


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """One local Ray instance for the module; workers and the local backend train on one thread each,
    so that both sum in the same order and their results can be compared exactly."""
    import ray

    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("MMLIB_CACHE", str(tmp_path_factory.mktemp("cache")))
        for attempt in range(3):  # Ray gives its node a fixed 30 s to start, short on a loaded machine
            try:
                ray.init(num_cpus=2, include_dashboard=False)
                break
            except Exception as err:
                if "timed out during startup" not in str(err) or attempt == 2:
                    raise
                ray.shutdown()
        yield ray
        ray.shutdown()


@pytest.fixture(scope="module")
def local_runs(ray_instance, tmp_path_factory):
    """erm seed 0 by the local backend (as the Ray sweeps below run it)."""
    out = tmp_path_factory.mktemp("local")
    assert plan.sweep("quick", out, [0], **ERM, executor=LocalExecutor(runner="python"), log=print).failed == []
    return out


HOLD = """
import sys, time
from mmlib import files
from mmlib.train import run_folder

with run_folder.locked(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


def metrics_without_timing(run_dir: Path) -> dict:
    """metrics.json less what the clock decides: seconds and the finishing time."""
    metrics = files.read_json(run_dir / run_folder.METRICS)
    for entry in metrics["history"]:
        del entry["seconds"]
    del metrics["seconds"], metrics["finished_at"]
    return metrics


def assert_same_results(run_dir: Path, reference: Path) -> None:
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference)
    assert (run_dir / run_folder.PER_CLASS).read_text() == (reference / run_folder.PER_CLASS).read_text()


def file_names(run_dir: Path) -> set[str]:
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
@needs_ray
def test_ray_backend_gives_the_local_results_skips_resumes_and_isolates_failures(ray_instance, local_runs, tmp_path):
    out = tmp_path / "runs"
    jobs = plan.plan("quick", out, seeds=[0, 1], **ERM).jobs
    erm0, erm1 = sorted((d for j in jobs for d in j.run_dirs), key=str)

    # erm seed 0 was interrupted after one of its two epochs (in this process; one thread, as the workers).
    real_save = run_folder.save_checkpoint

    def crash_on_second_save(folder, state):
        if (folder / run_folder.CHECKPOINT).exists():
            raise KeyboardInterrupt
        real_save(folder, state)

    run_folder.save_checkpoint = crash_on_second_save
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train(next(j.params[0] for j in jobs if j.run_dirs[0] == erm0), erm0)
    finally:
        run_folder.save_checkpoint = real_save
    first_epoch = torch.load(erm0 / run_folder.CHECKPOINT, weights_only=False)["history"][0]
    # erm seed 1's folder holds a corrupt checkpoint: its job must fail, alone.
    erm1.mkdir(parents=True)
    (erm1 / run_folder.CHECKPOINT).write_bytes(os.urandom(4096))

    lines = []
    failures = plan.sweep("quick", out, [0, 1], **ERM, executor=on_ray(out), log=lines.append).failed
    assert failures == [("quick digits-step-10 erm seed1", erm1 / "train.log")]
    assert lines[0] == "quick: 2 runs to do in 2 notebooks, 0 finished runs skipped"
    assert sum("final" in line and "best" in line for line in lines) == 1
    assert "error: no usable checkpoint in" in (erm1 / "train.log").read_text()
    assert_same_results(erm0, local_runs / erm0.relative_to(out))
    assert run_folder.load_results(erm0)["history"][0] == first_epoch  # resumed, not started again
    assert not [p for p in out.iterdir() if p.name.startswith(".ray-sweep-")]  # the shared-fs marker is gone

    finished = (erm0 / run_folder.METRICS).read_bytes()
    # erm seed 1 is now held by another process, as a dead node's run stays locked until its NFS lease ends:
    # the task waits the configured lock_wait (not the default), then fails the run naming the holder and
    # its host, and leaves its files alone.
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(erm1)], stdout=subprocess.PIPE, text=True)
    log_before = (erm1 / "train.log").read_bytes()
    lines.clear()
    try:
        assert holder.stdout.readline() == "held\n"
        start = time.monotonic()
        plan.sweep("quick", out, [0, 1], **ERM, executor=on_ray(out, lock_wait=3), log=lines.append)
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert lines[:2] == ["quick: 1 runs to do in 1 notebooks, 1 finished runs skipped",
                         f"[1/1] quick digits-step-10 erm seed1: FAILED: {erm1} is in use by process {holder.pid} "
                         f"on {socket.gethostname()} (see {erm1 / 'train.log'})"]
    assert 3 <= waited < run_folder.LOCK_WAIT
    assert (erm1 / "train.log").read_bytes() == log_before
    assert (erm0 / run_folder.METRICS).read_bytes() == finished


@pytest.mark.slow
@needs_ray
def test_without_a_shared_filesystem_the_driver_writes_the_records_notebooks_and_figures(ray_instance, local_runs,
                                                                                          tmp_path):
    from mmlib.sweep import ray_executor

    out = (tmp_path / "runs").resolve()
    options = {**ERM, "overrides": {**TINY, "tensorboard": True}}  # how a run logs, not what it computes
    executor = on_ray(out, shared_fs=False, runner="notebook")  # the notebook and its figures come back too
    assert plan.sweep("quick", out, [0], **options, executor=executor, log=print).failed == []
    record = {"config.json", "class_counts.json", "metrics.json", "per_class.csv", "FINISHED"}  # what collect takes
    figures = {f"{name}.{kind}" for name in ("curves", "per_class", "confusion") for kind in ("png", "pdf")}
    relative = Path("quick", "digits-step-10", "erm", "seed0")
    run_dir, reference = out / relative, local_runs / relative
    tensorboard = {f for f in file_names(run_dir) if f.startswith("tensorboard/events.out.tfevents.")}
    assert tensorboard and file_names(run_dir) == record | {"train.ipynb", "papermill.log"} | figures | tensorboard
    # What stays behind is what only the trainer needs.
    assert not {"checkpoint.pt", "checkpoint.prev.pt", "checkpoint.json", ".lock"} & file_names(run_dir)
    assert_same_results(run_dir, reference)
    # Trained in the worker's scratch folder, which it cleared once the files were on their way.
    scratch = ray_executor.scratch_root(out) / relative
    notebook = nbformat.read(run_dir / "train.ipynb", as_version=4)
    injected = next(c.source for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert f'run_dir = "{scratch}"' in injected
    assert not scratch.exists()


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            found[int(entry.name)] = (int(ppid), cmdline)
    return found


def _job_of(command: str, folder: Path) -> bool:
    """Whether a process's command line is a python-runner job training under ``folder`` (its parameters file
    names the run directories), not another test's."""
    if "mmlib.sweep.jobs" not in command:
        return False
    try:
        return str(folder) in Path(command.split()[-1]).read_text()
    except OSError:  # the job ended meanwhile, its parameters file gone
        return False


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the worker process through /proc (Linux)")
def test_a_killed_worker_is_retried_and_its_run_resumes_and_finishes_once(ray_instance, tmp_path):
    out = tmp_path / "runs"
    run_dir = out / "quick" / "digits-step-10" / "erm" / "seed0"
    killed = {}

    def kill_the_worker_after_the_first_epoch():
        while not (run_dir / run_folder.CHECKPOINT).exists():
            time.sleep(0.1)
        killed["first_epoch"] = torch.load(run_dir / run_folder.CHECKPOINT, weights_only=False)["history"][0]
        processes = _processes()
        killed["job"] = next(pid for pid, (_, cmd) in processes.items() if _job_of(cmd, run_dir))
        killed["worker"] = processes[killed["job"]][0]
        os.kill(killed["worker"], signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker_after_the_first_epoch, daemon=True)
    killer.start()
    lines = []
    failures = plan.sweep("quick", out, [0], ["digits-step-10"], ["erm"], overrides={**TINY, "epochs": 4},
                            executor=on_ray(out), log=lines.append).failed
    killer.join(timeout=1)
    assert "worker" in killed and "job" in killed
    assert failures == []
    assert len(lines) == 2 and lines[1].startswith("[1/1] quick digits-step-10 erm seed0: final")  # finished once
    history = run_folder.load_results(run_dir)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4] and history[0] == killed["first_epoch"]
    assert killed["job"] not in _processes()  # the killed attempt's job stopped once its worker was gone


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C as Python in a terminal takes it (KeyboardInterrupt): a suite started in the background (`pytest &`
    from a script) inherits SIGINT ignored, and Python then installs no handler for it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@needs_ray
@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the job processes through /proc (Linux)")
def test_ctrl_c_cancels_every_task_and_keeps_finished_runs(ray_instance, tmp_path, ctrl_c_raises):
    out = tmp_path / "runs"
    lines, finished = [], {}

    def log_then_press_ctrl_c(line):
        lines.append(line)
        if " final " in line:  # the first finished run: the others are still running or waiting
            run_dir = next(d for d in out.glob("quick/*/*/seed*") if run_folder.is_finished(d))
            finished[run_dir] = (run_dir / run_folder.METRICS).read_bytes()
            os.kill(os.getpid(), signal.SIGINT)

    try:
        plan.sweep("quick", out, [0, 1, 2], ["digits-step-10"], ["erm"], overrides=TINY, executor=on_ray(out),
                   log=log_then_press_ctrl_c)
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail(f"the sweep ended without being interrupted; it logged: {lines}")
    assert lines[-1].startswith("interrupted: cancelled ") and "the same command resumes" in lines[-1]
    deadline = time.monotonic() + 30
    while any(_job_of(cmd, out) for _, cmd in _processes().values()):
        assert time.monotonic() < deadline, "a cancelled job is still running"
        time.sleep(0.5)
    [(run_dir, metrics)] = finished.items()
    assert run_folder.is_finished(run_dir) and (run_dir / run_folder.METRICS).read_bytes() == metrics
    assert sum(run_folder.is_finished(d) for d in out.glob("quick/*/*/seed*")) < 3


@pytest.mark.slow
@needs_ray
def test_gpus_per_job_is_chosen_from_the_cluster_and_more_than_it_has_is_refused_before_any_work(ray_instance, tmp_path):
    assert on_ray(tmp_path)._gpus_per_job() == 0  # this cluster has no GPU: the tasks run on CPUs
    with pytest.raises(ValueError, match=r"--gpus-per-job 1, but the Ray cluster has 0 GPUs; give --gpus-per-job 0"):
        plan.sweep("quick", tmp_path, [0], **ERM, executor=on_ray(tmp_path, gpus_per_job=1), log=print)
    assert not (tmp_path / "quick").exists()


@pytest.mark.slow
def test_ray_options_are_checked_before_any_work(tmp_path):
    def cli(*options):
        return subprocess.run([sys.executable, "-m", "mmlib", "sweep", "quick", "--out", str(tmp_path), *options],
                              capture_output=True, text=True)

    done = cli("--gpus-per-job", "1")
    assert done.returncode == 2 and "--address, --gpus-per-job, --lock-wait and --no-shared-fs need --backend ray" in done.stderr
    done = cli("--lock-wait", "300")
    assert done.returncode == 2 and "--lock-wait and --no-shared-fs need --backend ray" in done.stderr
    done = cli("--backend", "ray", "--gpus", "0")
    assert done.returncode == 2 and "--gpus picks local GPUs" in done.stderr
    if importlib.util.find_spec("ray") is None:
        done = cli("--backend", "ray")
        assert done.returncode == 2 and done.stderr == 'error: --backend ray needs Ray: pip install -e ".[ray]"\n'
    else:
        done = cli("--backend", "ray", "--gpus-per-job", "1.5")
        assert done.returncode == 2 and "--gpus-per-job must be a fraction of one GPU" in done.stderr
        done = cli("--backend", "ray", "--lock-wait", "-1")
        assert done.returncode == 2 and done.stderr == "error: --lock-wait must be a number of seconds >= 0, got -1\n"
    assert not any(tmp_path.iterdir())
