"""Command line of mmlib.

  python -m mmlib train --run-dir DIR [run parameters]   one run (resumed if interrupted)
  python -m mmlib list TABLE [--settings ...] [--methods ...]   the cells of a paper table
  python -m mmlib sweep TABLE [options]                  a table's runs as papermill batches
  python -m mmlib sweep --preset quick                   the offline quick sweep, table and figures
"""

import argparse
import ast
import json
import sys

from mmlib import config as run_config
from mmlib import paper, rundir
from mmlib.methods import METHODS

def _method_table() -> str:
    rows = [f"  {m.name:<13} {m.label:<20} loss={m.loss}, head={m.head}, re-weighting={m.reweight}, "
            f"re-sampling={m.resample}{', SSP pre-training' if m.ssp else ''}" for m in METHODS.values()]
    return "methods:\n" + "\n".join(rows)


def _key_value(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def _table_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", nargs="+", help="only these settings, e.g. cifar10-exp-100 cifar100-step-10")
    parser.add_argument("--methods", nargs="+", help="only these methods, e.g. mm-drw ldam-drw")
    parser.add_argument("--mm-variants", nargs="+", default=["equations"], choices=run_config.MM_VARIANTS,
                        help="run the MM cells as the paper's equations and/or as the released code behaves")
    parser.add_argument("--mm-scale", type=float, help="scale s of every MM cell (default: the paper's s=10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one run into a run directory (resumes it if interrupted)",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_method_table())
    train.add_argument("--run-dir", required=True, help="the run directory (created; resumed if it holds a checkpoint)")
    run_config.add_arguments(train)

    listing = commands.add_parser("list", help="the cells of a paper table: setting, method, parameters, paper's error")
    listing.add_argument("table", choices=paper.TABLES)
    _table_filters(listing)

    sweep = commands.add_parser("sweep", help="run a table's cells x seeds through notebooks/train.ipynb with papermill")
    sweep.add_argument("table", nargs="?", choices=paper.TABLES)
    sweep.add_argument("--preset", choices=["quick"],
                       help="quick: the offline sweep of the quick table (digits, ResNet-8, 20 epochs of batch 32, seeds "
                            "0 1, fused in pairs) into <out>/quick, then its table and per-class figure into <out>/quick/figures")
    _table_filters(sweep)
    sweep.add_argument("--seeds", nargs="+", type=int, help="seeds of every cell (default: 0; 0 1 for the preset)")
    sweep.add_argument("--epochs", type=int, help="epochs of every run (default: the protocol's 200)")
    sweep.add_argument("--data-root", nargs="+", metavar="[DATASET=]PATH",
                       help="where CIFAR is: one PATH for both, or cifar10=PATH cifar100=PATH")
    sweep.add_argument("--out", help="runs root: <out>/<table>/<setting>/<run>/seed<k> (default: the checkout's runs/)")
    sweep.add_argument("--gpus", help="comma-separated GPU ids, one worker each (default: one worker)")
    sweep.add_argument("--fuse", type=int,
                       help="train up to this many runs of one setting as one fused model (default: 1; 8 suits a big GPU)")
    sweep.add_argument("--set", nargs="+", type=_key_value, default=[], metavar="KEY=VALUE",
                       help="any run parameter for every run, e.g. bf16=True channels_last=True compile=reduce-overhead")
    sweep.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    sweep.add_argument("--backend", choices=["local", "ray"], default="local",
                       help="local: worker threads on this machine; ray: one Ray task per notebook, on a Ray cluster "
                            "or a local Ray instance (pip install -e \".[ray]\")")
    sweep.add_argument("--address", help="Ray cluster to run on: auto (the one this machine belongs to) or HOST:PORT "
                                         "(default: start a local Ray instance)")
    sweep.add_argument("--gpus-per-job", type=float,
                       help="GPUs each notebook needs under Ray, fractions allowed: 0.5 puts two on a GPU, 0 runs on "
                            "CPUs (default: 1)")
    sweep.add_argument("--no-shared-fs", action="store_true",
                       help="Ray nodes share no filesystem: each notebook trains in node-local scratch and sends its "
                            "run directories (all but checkpoints) back to be written under --out")
    return parser


def _train(args) -> int:
    from mmlib.training import run

    config = run_config.from_args(args)
    results = run(config, args.run_dir)
    print(json.dumps({
        "run_dir": results["run_dir"],
        "final_error": results["final"]["error"],
        "best_error": results["best"]["error"],
        "group_error_final": results["final"]["group_error"],
    }, indent=1))
    return 0


def _list(args) -> int:
    for cell in paper.cells(args.table, args.settings, args.methods, args.mm_variants, args.mm_scale):
        params = " ".join(f"{k}={v}" for k, v in cell.params.items())
        error = "-" if cell.paper_error is None else f"{cell.paper_error:.2f}"
        print(f"{cell.table}\t{cell.setting.name}\t{cell.run_name}\t{params or '-'}\t{error}")
    return 0


def _sweep(args) -> int:
    from mmlib import sweeps

    defaults = {"fuse": 1, "seeds": [0]}
    table, overrides = args.table, dict(args.set)
    if args.preset == "quick":
        quick = sweeps.QUICK_PRESET
        table, overrides = quick["table"], {**quick["overrides"], **overrides}
        defaults = {key: quick[key] for key in defaults}
    elif table is None:
        raise ValueError("give a table (table1, table2, table3, quick) or --preset quick")
    fuse, seeds = (defaults[key] if getattr(args, key) is None else getattr(args, key) for key in ("fuse", "seeds"))
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    out = rundir.RUNS if args.out is None else args.out
    ray_options = {key: value for key, value in [("address", args.address), ("gpus_per_job", args.gpus_per_job)]
                   if value is not None}
    if args.no_shared_fs:
        ray_options["shared_fs"] = False
    failures = sweeps.sweep(
        table, out, seeds, args.settings, args.methods, args.mm_variants, args.mm_scale,
        sweeps.parse_data_roots(args.data_root), overrides, fuse, gpus, args.dry_run,
        backend=args.backend, ray_options=ray_options,
    )
    if args.preset == "quick" and not args.dry_run:
        for notebook in sweeps.report_quick(out):
            print(f"wrote {notebook} and its outputs beside it")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = {"train": _train, "list": _list, "sweep": _sweep}[args.command]
    try:
        return command(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
