"""Command line: ``python -m mmlib train ...`` (one run)."""

import argparse
import json
import sys

from mmlib import config as run_config
from mmlib.methods import METHODS


def _method_table() -> str:
    rows = [f"  {m.name:<13} {m.label:<20} loss={m.loss}, head={m.head}, re-weighting={m.reweight}, "
            f"re-sampling={m.resample}{', SSP pre-training' if m.ssp else ''}" for m in METHODS.values()]
    return "methods:\n" + "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmlib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train",
        help="train one run into a run directory (resumes it if interrupted)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_method_table(),
    )
    train.add_argument("--run-dir", required=True, help="the run directory (created; resumed if it holds a checkpoint)")
    run_config.add_arguments(train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "train":
        from mmlib.training import run

        try:
            config = run_config.from_args(args)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        results = run(config, args.run_dir)
        summary = {
            "run_dir": results["run_dir"],
            "final_error": results["final"]["error"],
            "best_error": results["best"]["error"],
            "group_error_final": results["final"]["group_error"],
        }
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
