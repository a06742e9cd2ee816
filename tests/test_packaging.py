"""environment.yml (conda) and pyproject.toml (pip) must list the same packages and versions."""

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "ray-core": "ray"}  # conda-forge names that differ from PyPI's


def split(requirement: str) -> tuple[str, str]:
    name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement.strip()).groups()
    return name.lower(), spec.replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for requirements in project["optional-dependencies"].values() for r in requirements]
    pip_side = dict(split(r) for r in project["dependencies"] + extras)
    pip_side["python"] = project["requires-python"]

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_side = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            assert entry["pip"] == ["-e ."], "the pip section installs mmlib itself, nothing else"
        elif entry != "pip":
            name, spec = split(entry)
            conda_side[CONDA_TO_PIP.get(name, name)] = spec
    assert conda_side == pip_side
