"""environment.yml (conda, CUDA), environment-cpu.yml (conda, CPU) and pyproject.toml (pip, with every extra) must agree.

conda itself is not needed: the files are parsed and compared. conda-forge builds PyTorch twice and
names the builds by metapackage: pytorch-gpu pins the CUDA build (which needs a driver, conda's
__cuda virtual package), pytorch-cpu the CPU build; a plain "pytorch" would leave the choice to the solver.
"""

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
TORCH_BUILDS = {"environment.yml": "pytorch-gpu", "environment-cpu.yml": "pytorch-cpu"}
CONDA_TO_PIP = {"ray-core": "ray"}  # conda-forge names that differ from PyPI's (torch: TORCH_BUILDS)


def split(requirement: str) -> tuple[str, str]:
    name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement.strip()).groups()
    return name.lower(), spec.replace(" ", "")


def conda_requirements(file: str) -> dict[str, str]:
    env = yaml.safe_load((ROOT / file).read_text())
    assert env["channels"] == ["conda-forge"], f"{file}: the build metapackages are conda-forge's; mixing channels breaks them"
    requirements = {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            assert entry["pip"] == ["-e ."], "the pip section installs mmlib itself, nothing else"
        elif entry != "pip":
            name, spec = split(entry)
            requirements[CONDA_TO_PIP.get(name, name)] = spec
    return requirements


@pytest.mark.parametrize("file", TORCH_BUILDS)
def test_conda_environment_matches_pyproject(file):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [r for requirements in project["optional-dependencies"].values() for r in requirements]
    pip_side = dict(split(r) for r in project["dependencies"] + extras)
    pip_side["python"] = project["requires-python"]
    conda_side = conda_requirements(file)
    assert "pytorch" not in conda_side, f"{file}: ask for a build ({TORCH_BUILDS[file]}), not the solver's choice"
    conda_side["torch"] = conda_side.pop(TORCH_BUILDS[file])
    assert conda_side == pip_side


def test_the_two_environments_differ_only_in_the_pytorch_build():
    gpu, cpu = (conda_requirements(file) for file in TORCH_BUILDS)
    assert gpu.pop("pytorch-gpu") == cpu.pop("pytorch-cpu")
    assert gpu == cpu
    names = {file: yaml.safe_load((ROOT / file).read_text())["name"] for file in TORCH_BUILDS}
    assert len(set(names.values())) == 2, "distinct environment names, so both can be installed"
    readme = (ROOT / "README.md").read_text()
    for file in TORCH_BUILDS:
        assert f"conda env create -f {file}" in readme
