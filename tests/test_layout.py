"""The package's layout holds: each wing imports only the wings before it, the shared root imports no wing, and
mmlib 0.1's module paths still work for this release."""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import layout  # noqa: E402  (tools/layout.py: the import graph, as the README's drawing shows it)


def test_each_wing_imports_only_the_wings_before_it_and_the_root_only_the_root():
    top = layout.graph()
    assert layout.back_up(top) == []
    wings = {f"mmlib.{w}" for w in layout.WINGS}
    for room, targets in top.items():
        if room not in wings and room != "mmlib.__main__":  # the command line sits above everything
            assert not targets & wings, f"{room} (shared, at the root) imports the wing(s) {targets & wings}"


def test_an_old_module_path_imports_its_new_module_with_a_warning():
    code = ("import warnings\nwarnings.simplefilter('always')\nimport mmlib.losses, mmlib.train.losses\n"
            "assert mmlib.losses is mmlib.train.losses\nfrom mmlib.training import run\nprint(run.__qualname__)\n"
            # patching through the old path patches the module that uses the name, and undoes it
            "import unittest.mock, mmlib.train.trainer as trainer\n"
            "with unittest.mock.patch('mmlib.training.select_device', lambda name: 'patched'):\n"
            "    assert trainer.select_device('cpu') == 'patched'\n"
            "assert trainer.select_device('cpu').type == 'cpu' and 'train_many' in dir(mmlib.training)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "train", done.stderr
    assert "FutureWarning: mmlib.training.run is now mmlib.train.trainer.train; the old name goes in" in done.stderr
    assert "FutureWarning: mmlib.losses is now mmlib.train.losses; the old name goes in mmlib 0.3" in done.stderr


def test_python_m_mmlib_jobs_still_runs_the_job_runner():
    done = subprocess.run([sys.executable, "-m", "mmlib.jobs"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: python -m mmlib.sweep.jobs PARAMETERS.yaml" in done.stderr
