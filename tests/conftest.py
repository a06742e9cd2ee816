"""Fixtures every test module shares."""

import pytest

from mmlib.data import load_dataset


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test its own $MMLIB_CACHE: nothing is read from, or left in, the user's cache."""
    monkeypatch.setenv("MMLIB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits():
    """digits, long-tailed with ratio 10: the tests' small real dataset."""
    return load_dataset("digits", imb_type="exp", ratio=10.0)
