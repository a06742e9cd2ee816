"""Time `python -m mmlib report` on a fixture results tree of the whole of Table 1.

The tree holds, for every Table 1 cell and both MM variants (144 cells), ``--seeds`` finished runs
(200 epochs, CIFAR-sized class counts and test sets) with made-up errors near the paper's numbers:
what a full GPU sweep would leave in results/. The runs are written by tests/helpers/fixture_runs.py and
collected by ``mmlib.report.results.collect`` (also timed), then the report renders every table, Fig. 1-3
and reproduction.md from them.

    python benchmarks/report.py [--seeds 3] [--keep DIR]
"""

import argparse
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY / "tests"))

from helpers import fixture_runs  # noqa: E402  (after the tests folder is on the path)

from mmlib import paper  # noqa: E402
from mmlib.data import sources
from mmlib.report import results  # noqa: E402


def made_up_correct(cell: paper.Cell, seed: int) -> list[int]:
    """Per-class correct counts whose error is near the paper's, rising from the largest to the rarest class."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{cell.setting.name}/{cell.run_name}".encode())])
    classes = sources.dataset_size(cell.setting.dataset)[1]
    test_per_class = 10000 // classes
    base = cell.paper_error + rng.normal(0, 0.7)
    slope = np.linspace(-0.6, 0.6, classes) * min(base, 100 - base)
    errors = np.clip(base + slope + rng.normal(0, 2, classes), 0, 100)
    return [int(round(test_per_class * (1 - e / 100))) for e in errors]


def write_tree(runs: Path, seeds: int) -> int:
    count = 0
    for cell in paper.cells("table1", mm_variants=("equations", "released")):
        for seed in range(seeds):
            correct = made_up_correct(cell, seed)
            fixture_runs.write_run(cell.path(runs) / f"seed{seed}", cell.run_params(seed=seed),
                                   10000 // len(correct), correct)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the tree and the report here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = args.keep or Path(scratch)
        runs, collected_root, out = where / "runs", where / "results", where / "figures"
        print(f"{write_tree(runs, args.seeds)} fixture runs written under {runs}")
        start = time.perf_counter()
        collected = results.collect(runs, collected_root)
        print(f"collect: {len(collected.written)} results in {time.perf_counter() - start:.1f} s, "
              f"{sum(p.stat().st_size for p in collected_root.rglob('*') if p.is_file()) / 1e6:.1f} MB")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mmlib", "report", "--results", str(collected_root), "--out", str(out)],
                       check=True, cwd=REPOSITORY)
        print(f"report: {time.perf_counter() - start:.1f} s for every table, Fig. 1-3 and reproduction.md")


if __name__ == "__main__":
    main()
