"""Fixtures every test module shares, and the suite's one thread a process."""

import os

import pytest
import torch

from mmlib.data.sources import load_dataset


def pytest_configure(config):
    """One compute thread a process, inherited by the processes the tests start: the suite runs on 2 workers
    (pytest -n 2) on a 2-core machine, where 2 threads each would only contend; and runs that tests compare
    (in this process, in a train or sweep process, on a Ray worker) then sum in the same order."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The modules with the most slow tests first: on 2 workers (pytest -n 2 --dist loadfile) the longest start
    first and the short ones fill the gaps, rather than a long module starting last. Within a module, its order."""
    slow = {}
    for item in items:
        slow[item.module.__name__] = slow.get(item.module.__name__, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.module.__name__])  # stable: each module keeps its own order


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test its own $MMLIB_CACHE: nothing is read from, or left in, the user's cache."""
    monkeypatch.setenv("MMLIB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits():
    """digits, long-tailed with ratio 10: the tests' small real dataset."""
    return load_dataset("digits", imb_type="exp", ratio=10.0)
