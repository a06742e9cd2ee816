"""Command line of mmlib.

  python -m mmlib train --run-dir DIR [run parameters]   one run (resumed if interrupted)
  python -m mmlib list TABLE [--settings ...] [--methods ...]   the cells of a paper table
  python -m mmlib export-data --dataset D --data-root PATH --out FILE.npz   one setting in one file
  python -m mmlib sweep TABLE [options]                  a table's runs as papermill (or python) jobs
  python -m mmlib sweep --preset quick                   the offline quick sweep, table and figures
  python -m mmlib collect [--from runs] [--to results]   finished runs' results into results/
  python -m mmlib report [--results results] [--out figures]   every table and figure from the results
  python -m mmlib cache [--clear]                        list (or delete) mmlib's caches

Errors are one line, "error: ...", with an exit code per kind (mmlib.errors); --debug (or
MMLIB_DEBUG=1) shows the traceback instead.
"""

import argparse
import ast
import json
import os
import sys
import warnings

import mmlib
from mmlib import config as run_config
from mmlib import errors, files, paper, stopping
from mmlib.choices import METHODS, MM_VARIANTS
from mmlib.data import cache, sources
from mmlib.sweep import jobs
from mmlib.train import run_folder


def _method_table() -> str:
    rows = [f"  {m.name:<13} {m.label:<20} loss={m.loss}, head={m.head}, re-weighting={m.reweight}, "
            f"re-sampling={m.resample}{', SSP pre-training' if m.ssp else ''}" for m in METHODS.values()]
    return "methods:\n" + "\n".join(rows)


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if value.lower() in ("true", "false"):  # as a shell user writes them, besides Python's True and False
        return key, value.lower() == "true"
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


IDLE_HELP = ("train at the CPU's idle priority, behind everything else this machine runs (Linux: SCHED_IDLE in a "
             "session of its own at nice 19; elsewhere nice 19): a campaign that stays out of the way")


def _table_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", nargs="+", help="only these settings, e.g. cifar10-exp-100 cifar100-step-10")
    parser.add_argument("--methods", nargs="+",
                        help="only these methods, in this order (a sweep runs each seed's cells in it), "
                             "e.g. ldam-drw mm-drw erm")
    parser.add_argument("--mm-variants", nargs="+", default=["equations"], choices=list(MM_VARIANTS),
                        help="run the MM cells as the paper's equations, as the released code behaves, and/or with one "
                             "of its departures alone (first-label, mask-zero)")
    parser.add_argument("--mm-scale", type=float, help="scale s of every MM cell (default: the paper's s=10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error (or set MMLIB_DEBUG=1)")

    train = commands.add_parser("train", help="train one run into a run directory (resumes it if interrupted)",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=_method_table() + "\n\nAn image-folder data root is decoded once into "
                                       "mmlib's cache ($MMLIB_CACHE, default ~/.cache/mmlib);\npython -m mmlib cache "
                                       "lists the caches, python -m mmlib cache --clear deletes them.",
                                parents=[common])
    train.add_argument("--run-dir", required=True, help="the run directory (created; resumed if it holds a checkpoint)")
    train.add_argument("--time-limit", type=stopping.parse_duration, metavar="DURATION",
                       help="90s, 14m, 2h: checkpoint and stop before then (judged from the epochs measured), exit "
                            "code 75; the same command resumes. SIGTERM and SIGUSR1 stop the run at the end of its "
                            "epoch the same way (a second signal: at once, the last checkpoint kept)")
    train.add_argument("--idle", action="store_true", help=IDLE_HELP)
    run_config.add_arguments(train)

    listing = commands.add_parser("list", help="the cells of a paper table: setting, method, parameters, paper's error",
                                  parents=[common])
    listing.add_argument("table", choices=paper.TABLES)
    _table_filters(listing)

    export = commands.add_parser(
        "export-data",
        help="write one imbalanced setting (training subset, test set, counts, checksums) to one .npz file",
        description="Write one setting to a single file that --data-root (data_root in notebooks) reads: take it "
                    "to a GPU node or a machine without internet instead of the whole dataset.", parents=[common])
    run_config.add_arguments(export, run_config.DATASET_FIELDS)
    export.add_argument("--out", required=True, help="the file to write, ending in .npz")

    sweep = commands.add_parser("sweep", help="run a table's cells x seeds, each job through notebooks/train.ipynb "
                                              "with papermill (or python -m mmlib.sweep.jobs: --runner python)",
                                parents=[common])
    sweep.add_argument("table", nargs="?", choices=paper.TABLES)
    sweep.add_argument("--preset", choices=["quick"],
                       help="quick: the offline sweep of the quick table (digits, ResNet-8, 20 epochs of batch 32, "
                            "seeds 0 1, fused in pairs) into <out>/quick, then its table and per-class figure into "
                            "<out>/quick/figures")
    _table_filters(sweep)
    sweep.add_argument("--seeds", nargs="+", type=int, help="seeds of every cell (default: 0; 0 1 for the preset)")
    sweep.add_argument("--epochs", type=int, help="epochs of every run (default: the protocol's 200)")
    sweep.add_argument("--data-root", nargs="+", metavar="[DATASET=]PATH",
                       help="where CIFAR is: one PATH for both, cifar10=PATH cifar100=PATH, or a setting's "
                            "dataset file from export-data, e.g. cifar10-exp-100=FILE.npz")
    sweep.add_argument("--out", help="runs root: <out>/<table>/<setting>/<run>/seed<k> (default: the checkout's runs/)")
    sweep.add_argument("--gpus", help="comma-separated GPU ids, one worker each (default: one worker)")
    sweep.add_argument("--fuse", type=_fuse,
                       help="train up to this many runs of one setting as one fused model (default: 1), or auto: 1 on "
                            "the CPU, on a GPU the K with the most images/s in the curve of benchmarks/throughput.py "
                            "--save-curve that fits in its free memory")
    sweep.add_argument("--set", nargs="+", type=_key_value, default=[], metavar="KEY=VALUE",
                       help="any run parameter for every run, e.g. bf16=True channels_last=True compile=off "
                            "download=True; not those the sweep or the table's cells set (seed, method, ...)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print the plan, in the order it runs, and its estimated wall time from the epoch times "
                            "measured so far (runs in --out, the K curve of benchmarks/throughput.py --save-curve); "
                            "run nothing")
    sweep.add_argument("--time-limit", type=stopping.parse_duration, metavar="DURATION",
                       help="90s, 14m, 2h: every job checkpoints and stops before then, no job starts that could not "
                            "reach its first checkpoint in the time left; the sweep then exits with code 75 (the same "
                            "command resumes). SIGTERM and SIGUSR1 stop a local sweep the same way (a second signal: "
                            "at once); a Ray sweep stops its tasks on Ctrl-C")
    sweep.add_argument("--idle", action="store_true",
                       help=IDLE_HELP + "; its jobs inherit it, and checkpoint every epoch unless --set "
                                        "checkpoint_every=N")
    sweep.add_argument("--rerun-changed", action="store_true",
                       help="runs in the planned folders that were trained with other parameters (a sweep refuses "
                            "them) are moved aside to <run>.replaced-<UTC time> and trained anew")
    sweep.add_argument("--retry-failed", action="store_true",
                       help="retry runs that failed before (a diverging run of a fused group is marked FAILED and "
                            "left alone), each from its last good checkpoint")
    sweep.add_argument("--runner", choices=["notebook", "python"], default="notebook",
                       help="how each job trains, in a fresh process: notebook executes notebooks/train.ipynb with "
                            "papermill (the executed notebook lands beside the run's results); python runs the same "
                            "training without a notebook kernel (python -m mmlib.sweep.jobs; its output in train.log), "
                            "for machines without Jupyter")
    sweep.add_argument("--backend", choices=["local", "ray"], default="local",
                       help="local: worker threads on this machine; ray: one Ray task per notebook, on a Ray cluster "
                            "or a local Ray instance (pip install -e \".[ray]\")")
    sweep.add_argument("--address", help="Ray cluster to run on: auto (the one this machine belongs to) or HOST:PORT "
                                         "(default: start a local Ray instance)")
    sweep.add_argument("--gpus-per-job", type=float,
                       help="GPUs each notebook needs under Ray, fractions allowed: 0.5 puts two on a GPU, 0 runs on "
                            "CPUs (default: 1 where the cluster has GPUs, else 0)")
    sweep.add_argument("--lock-wait", type=float, metavar="SECONDS",
                       help="how long a Ray task waits for a run another process holds before failing it, naming "
                            f"the holder's pid and host (default: {run_folder.LOCK_WAIT}; a dead node's lock on NFSv4 "
                            "outlives it by the server's lease, 90 s by default: give more if yours is longer)")
    sweep.add_argument("--no-shared-fs", action="store_true",
                       help="Ray nodes share no filesystem: each notebook trains in node-local scratch and sends back, "
                            "to be written under --out, its runs' results, notebooks and figures only: "
                            f"{', '.join(jobs.OUTPUTS)} where present (no checkpoints, checkpoint.json or .lock)")

    caching = commands.add_parser(
        "cache", help="list mmlib's caches (decoded image folders, SSP backbones), or delete them with --clear",
        description=f"mmlib caches under {cache.cache_dir()} ($MMLIB_CACHE, default ~/.cache/mmlib): each CIFAR "
                    "image folder decoded once (one file per dataset content, about 185 MB for CIFAR-10, shared by "
                    "moved or copied folders), and ldam-drw-ssp's pre-trained backbones. Deleting them is safe: "
                    "they are rebuilt when needed.", parents=[common])
    caching.add_argument("--clear", action="store_true", help="delete every cache entry listed")

    collect = commands.add_parser("collect",
                                  help="copy finished runs' results (no checkpoints) from runs/ into results/",
                                  parents=[common])
    collect.add_argument("--from", dest="source", help="runs root (default: the checkout's runs/)")
    collect.add_argument("--to", dest="target", help="results root (default: the checkout's results/; "
                         "runs of another schedule than 200 epochs go under <to>/short/)")
    collect.add_argument("--replace", action="store_true",
                         help="overwrite results of another configuration or with other results")

    report = commands.add_parser("report", help="execute the table and figure notebooks against the results",
                                   parents=[common])
    report.add_argument("--results", help="results root, or a runs root (default: the checkout's results/)")
    report.add_argument("--out", help="where tables, figures and reproduction.md go (default: the checkout's figures/)")
    report.add_argument("--tables", nargs="+", choices=[t for t in paper.TABLES if t != "quick"],
                        help="only these tables (default: all but quick)")
    report.add_argument("--protocol", nargs="+", type=_key_value, default=None, metavar="KEY=VALUE",
                        help="run parameters the runs took beyond their cells', e.g. epochs=30 to report a shortened "
                             "sweep (default: each table's protocol; runs of other parameters are left out and listed)")
    return parser


def _fuse(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of runs or auto, got {value!r}") from None


def _train(args) -> int:
    deadline = None if args.time_limit is None else mmlib.STARTED + args.time_limit
    with sources.download_option("--download"):
        config = run_config.from_args(args)  # a bad parameter or missing data is said before torch is imported
        sources.check(config)
        from mmlib.train import trainer

        finished = run_folder.is_finished(args.run_dir)
        results = trainer.train(config, args.run_dir, stopping.Stop(deadline))
    if finished:
        print(f"note: {args.run_dir} holds a finished run, so nothing was trained; its results follow. To train "
              f"again, give another --run-dir or delete {args.run_dir}.", file=sys.stderr)
    print(json.dumps({
        "run_dir": results["run_dir"],
        "final_error": results["final"]["error"],
        "best_error": results["best"]["error"],
        "group_error_final": results["final"]["group_error"],
    }, indent=1))
    return 0


def _export_data(args) -> int:
    from mmlib.data import datafile
    from mmlib.data.sources import load_dataset

    if not args.out.endswith(".npz"):
        raise ValueError(f"--out {args.out}: a dataset file's name must end in .npz")
    with sources.download_option("--download"):
        dataset = load_dataset(args.dataset, args.data_root, args.imb_type, args.ratio, args.rand_number, args.download)
    path = datafile.export(dataset, args.out)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {dataset.description}")
    return 0


def _list(args) -> int:
    for cell in paper.cells(args.table, args.settings, args.methods, args.mm_variants, args.mm_scale):
        params = " ".join(f"{k}={v}" for k, v in cell.params.items())
        error = "-" if cell.paper_error is None else f"{cell.paper_error:.2f}"
        print(f"{cell.table}\t{cell.setting.name}\t{cell.run_name}\t{params or '-'}\t{error}")
    return 0


def _sweep(args) -> int:
    from mmlib.sweep import plan

    defaults = {"fuse": 1, "seeds": [0]}
    table, overrides = args.table, dict(args.set)
    if args.preset == "quick":
        quick = plan.QUICK_PRESET
        table, overrides = quick["table"], {**quick["overrides"], **overrides}
        defaults = {key: quick[key] for key in defaults}
    elif table is None:
        raise ValueError(f"give a table ({', '.join(paper.TABLES)}) or --preset quick")
    fuse, seeds = (defaults[key] if getattr(args, key) is None else getattr(args, key) for key in ("fuse", "seeds"))
    if args.idle:  # runs that yield to other work are the ones most often stopped: lose at most an epoch
        overrides.setdefault("checkpoint_every", 1)
    if args.epochs is not None:
        if dict(args.set).get("epochs", args.epochs) != args.epochs:
            raise ValueError(f"--epochs {args.epochs} and --set epochs={dict(args.set)['epochs']} disagree: give one")
        overrides["epochs"] = args.epochs
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    if fuse == "auto":
        from mmlib.train import fusion

        fuse = fusion.auto_fuse(gpus)
        print(f"--fuse auto: up to {fuse} runs a fused model")
    out = files.RUNS if args.out is None else args.out
    executor = _executor(args, out, gpus)
    with sources.download_option("--set download=True"):
        outcome = plan.sweep(
            table, out, seeds, args.settings, args.methods, args.mm_variants, args.mm_scale,
            plan.parse_data_roots(args.data_root), overrides, fuse, executor, args.dry_run,
            rerun_changed=args.rerun_changed, retry_failed=args.retry_failed,
            deadline=None if args.time_limit is None else mmlib.STARTED + args.time_limit,
        )
    if outcome.interrupted:
        return errors.StoppedError.exit_code
    failed_reports = []
    if args.preset == "quick" and not args.dry_run:
        from mmlib.report import render

        failed_reports = render.report_quick(out, protocol=overrides)
    return 1 if outcome.failed or outcome.too_long or failed_reports else 0


def _executor(args, out, gpus: list[int] | None):
    """The sweep's executor: worker threads on this machine, or Ray tasks (its options refused without it)."""
    if args.backend == "local":
        if args.address is not None or args.gpus_per_job is not None or args.lock_wait is not None or args.no_shared_fs:
            raise ValueError("--address, --gpus-per-job, --lock-wait and --no-shared-fs need --backend ray")
        from mmlib.sweep.local_executor import LocalExecutor

        return LocalExecutor(gpus, args.runner)
    if gpus:
        raise ValueError("--gpus picks local GPUs; with --backend ray give --gpus-per-job and Ray assigns them")
    from mmlib.sweep import ray_executor  # Ray is an optional extra

    lock_wait = run_folder.LOCK_WAIT if args.lock_wait is None else args.lock_wait
    return ray_executor.RayExecutor(out, args.address, args.gpus_per_job, not args.no_shared_fs, args.runner, lock_wait)


def _collect(args) -> int:
    from mmlib.report import results

    done = results.collect(args.source, args.target, args.replace)
    for run, result in done.written:
        print(f"collected {run} -> {result}")
    print("\n".join(done.lines()))
    return 1 if done.refused else 0


def _report(args) -> int:
    from mmlib.report import render

    failed = render.report(args.results, args.out, args.tables or render.REPORT_TABLES,
                            protocol=None if args.protocol is None else dict(args.protocol))
    return 1 if failed else 0


def _cache(args) -> int:
    entries = cache.clear() if args.clear else cache.entries()
    for path, size, what in entries:
        print(f"{size / 1e6:9.1f} MB  {path}  ({what})")
    total = sum(size for _, size, _ in entries) / 1e6
    print(f"{'deleted' if args.clear else 'in'} {cache.cache_dir()}: {len(entries)} entries, {total:.1f} MB"
          + ("" if args.clear or not entries else "; python -m mmlib cache --clear deletes them"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = lambda message, *rest, **kwargs: f"warning: {message}\n"
    if getattr(args, "idle", False):
        from mmlib.train.idle import run_idle

        return run_idle(lambda: _dispatch(args))
    return _dispatch(args)


def _dispatch(args) -> int:
    """The command's exit code; an error as one line and its exit code (mmlib.errors)."""
    command = {"train": _train, "list": _list, "export-data": _export_data, "sweep": _sweep, "collect": _collect,
               "report": _report, "cache": _cache}[args.command]
    def flushed() -> int:
        try:
            code = command(args)
            sys.stdout.flush()  # a reader that left shows here rather than at exit
            return code
        except BrokenPipeError:  # the reader left (python -m mmlib list table1 | head): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python flushes stdout once more at exit
            return 0

    return errors.exit_status(flushed, args.debug or os.environ.get("MMLIB_DEBUG") == "1")


if __name__ == "__main__":
    sys.exit(main())
