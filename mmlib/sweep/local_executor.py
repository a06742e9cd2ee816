"""The local executor of sweeps: jobs on worker threads of this machine, one worker per GPU.

Each worker takes the next job and runs it in a fresh process (mmlib.sweep.jobs.execute_job) that sees only its
GPU. With a deadline (--time-limit) a job that could not reach its first checkpoint in the time left
(mmlib.sweep.timing, from what was measured, with the stop's margin) is not started (and reported apart where
it needs more than the whole limit, which no rerun would change), and every started job stops before
the deadline with its checkpoint written. SIGTERM or SIGUSR1 (pre-emption; Slurm's --signal) stops the sweep the same
way: no job starts any more, and the running ones checkpoint at the end of their epoch (the executor
creates their stop file); a second signal stops them at once, their previous checkpoints intact.
"""

import itertools
import queue
import signal
import threading
import time

import mmlib
from mmlib import stopping
from mmlib.stopping import handling, new_stop_file
from mmlib.sweep import jobs, timing


class LocalExecutor:
    """Jobs on this machine: one worker thread per GPU of ``gpus`` (each job seeing only its GPU), or one;
    each job run by ``runner`` (mmlib.sweep.jobs.execute_job)."""

    def __init__(self, gpus: list[int] | None = None, runner: str = "notebook"):
        jobs.check_runner(runner)
        self.gpus, self.runner = gpus or [None], runner
        self.workers = len(self.gpus)

    def execute(self, planned: list[jobs.Job], log=print, deadline: float | None = None, times=None) -> jobs.Outcome:
        """Run the jobs; ``deadline`` (time.time()) stops them in time, ``times`` (mmlib.sweep.timing.EpochTimes)
        tells which can still reach a checkpoint before it."""
        todo = queue.Queue()
        for job in planned:
            todo.put(job)
        outcome, lock = jobs.Outcome(), threading.Lock()
        total, done = sum(len(j.run_dirs) for j in planned), itertools.count(1)
        stop_file = new_stop_file()
        stopping_signals, processes, killed = [], set(), set()  # signals received; running and killed processes

        def first_checkpoint(job: jobs.Job) -> float:
            """Seconds the job needs to reach its first checkpoint, with the stop's margin; start-up alone where
            nothing was measured."""
            return stopping.MARGIN * ((times.first_checkpoint_seconds(job) if times is not None else None)
                                      or timing.STARTUP)

        def worker(gpu: int | None):
            while True:
                try:
                    job = todo.get_nowait()
                except queue.Empty:
                    return
                needed = first_checkpoint(job) if deadline is not None else 0.0
                if stopping_signals or (deadline is not None and time.time() + needed > deadline):
                    with lock:
                        if not stopping_signals and mmlib.STARTED + needed > deadline:  # more than the whole limit
                            outcome.too_long.append((job.labels, needed))
                        else:
                            outcome.not_started.extend(job.labels)
                    continue
                job.deadline, job.stop_file = deadline, str(stop_file)
                mine = []  # the job's process, as it starts
                start = time.perf_counter()
                try:
                    status = jobs.execute_job(job, gpu, self.runner,
                                              started=lambda p: (mine.append(p), processes.add(p)))
                    if status == "failed" and mine and mine[0] in killed:  # by a second signal: it resumes
                        status = "stopped"
                    with lock:
                        jobs.log_outcome(job, status, time.perf_counter() - start, done, total, log, outcome)
                        if times is not None:
                            times.learn_job(job)
                except Exception as error:  # e.g. a full disk writing its log: this job fails, the others run
                    with lock:
                        jobs.log_error(job, error, done, total, log, outcome)
                finally:
                    processes.difference_update(mine)

        def on_signal(number, frame):
            stopping_signals.append(signal.Signals(number).name)
            if len(stopping_signals) == 1:
                stop_file.touch()
                log(f"{stopping_signals[0]}: no job starts any more; the running ones stop at the end of their epoch, "
                    "checkpoint written (a second signal stops them at once)")
            else:
                for process in list(processes):
                    killed.add(process)
                    process.kill()  # the last checkpoint stays: checkpoints are written whole or not at all

        workers = [threading.Thread(target=worker, args=(gpu,)) for gpu in self.gpus]
        try:
            with handling(on_signal):
                for w in workers:
                    w.start()
                for w in workers:
                    while w.is_alive():  # a timed join, so that the main thread gets to run the signal handler
                        w.join(timeout=0.5)
        finally:  # Ctrl-C too
            stop_file.unlink(missing_ok=True)
        return outcome

