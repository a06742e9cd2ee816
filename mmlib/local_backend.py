"""The local executor of sweeps: jobs on worker threads of this machine, one worker per GPU.

Each worker takes the next job and runs it in a fresh process (mmlib.jobs.run_job) that sees only its
GPU. With a deadline (--time-limit) a job that could not reach its first checkpoint in the time left
(mmlib.timing, from what was measured) is not started, and every started job stops before the deadline
with its checkpoint written. SIGTERM or SIGUSR1 (pre-emption; Slurm's --signal) stops the sweep the same
way: no job starts any more, and the running ones checkpoint at the end of their epoch (the executor
creates their stop file); a second signal stops them at once, their previous checkpoints intact.
"""

import itertools
import queue
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path

from mmlib import jobs
from mmlib.stopping import handling


class LocalExecutor:
    """Jobs on this machine: one worker thread per GPU of ``gpus`` (each job seeing only its GPU), or one;
    each job run by ``runner`` (mmlib.jobs.run_job)."""

    def __init__(self, gpus: list[int] | None = None, runner: str = "notebook"):
        jobs.check_runner(runner)
        self.gpus, self.runner = gpus or [None], runner
        self.workers = len(self.gpus)

    def run(self, planned: list[jobs.Job], log=print, deadline: float | None = None, times=None) -> jobs.Outcome:
        """Run the jobs; ``deadline`` (time.time()) stops them in time, ``times`` (mmlib.timing.EpochTimes)
        tells which can still reach a checkpoint before it."""
        todo = queue.Queue()
        for job in planned:
            todo.put(job)
        outcome, lock = jobs.Outcome(), threading.Lock()
        total, done = sum(len(j.run_dirs) for j in planned), itertools.count(1)
        stop_file = Path(tempfile.gettempdir()) / f"mmlib-stop-{uuid.uuid4().hex}"
        stopping, processes = [], set()  # the signals received; the running jobs' processes

        def too_late(job: jobs.Job) -> bool:
            needed = times.first_checkpoint_seconds(job) if times is not None else None
            return deadline is not None and time.time() + (needed or 0.0) > deadline

        def worker(gpu: int | None):
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                if stopping or too_late(job):
                    with lock:
                        outcome.not_started.extend(job.labels)
                    continue
                job.deadline, job.stop_file = deadline, str(stop_file)
                start = time.perf_counter()
                status = jobs.run_job(job, gpu, self.runner, started=processes.add)
                seconds = time.perf_counter() - start
                with lock:
                    jobs.record_outcome(job, "stopped" if stopping and status == "failed" else status, seconds, done,
                                        total, log, outcome)
                    if times is not None:
                        times.learn_job(job)

        def on_signal(number, frame):
            stopping.append(signal.Signals(number).name)
            if len(stopping) == 1:
                stop_file.touch()
                log(f"{stopping[0]}: no job starts any more; the running ones stop at the end of their epoch, "
                    "checkpoint written (a second signal stops them at once)")
            else:
                for process in list(processes):
                    process.kill()  # the last checkpoint stays: checkpoints are written whole or not at all

        workers = [threading.Thread(target=worker, args=(gpu,)) for gpu in self.gpus]
        with handling(on_signal):
            for w in workers:
                w.start()
            for w in workers:
                while w.is_alive():  # a timed join, so that the main thread gets to run the signal handler
                    w.join(timeout=0.5)
        stop_file.unlink(missing_ok=True)
        return outcome

