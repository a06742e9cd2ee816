"""The notebooks' side of mmlib: checking the parameters papermill injects, and executing notebooks.

Papermill runs a notebook's "parameters" cell, then the "injected-parameters" cell it writes after it
(whose first line is ``# Parameters``); for a name the notebook does not define it only prints a
warning. ``check_parameters``, called by every notebook's first code cell, reads both cells back
from the kernel's input history and stops the notebook there, with one line saying what is wrong and
how to fix it, when a parameter is unknown or its type differs from its default's.

``execute`` runs a notebook with papermill on a kernel whose channels are CurveZMQ-encrypted (the
kernel manager provisions the keys), so the kernel has nothing to warn about; ``python -m
mmlib.notebook IN OUT PARAMS.yaml`` does the same from a shell (the sweeps run it so).
"""

import ast
import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mmlib.config import check_type
from mmlib.errors import MMLibError, StoppedError, did_you_mean, exit_status
from mmlib.stopping import new_stop_file, when_orphaned

INJECTED_HEADER = "# Parameters"  # papermill's first line of the injected-parameters cell


class NotebookFailed(MMLibError):
    """A cell of an executed notebook raised; its exit code is 75 when it was a run stopped early (the same command
    resumes it), else 1."""

    def __init__(self, output, failure):
        super().__init__(f"{output} failed in cell {failure.exec_count}: {failure.ename}: {failure.evalue}")
        self.exit_code = StoppedError.exit_code if failure.ename == StoppedError.__name__ else 1


class ParameterError(ValueError):
    """A bad notebook parameter; IPython shows it as this one line, without a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


@contextlib.contextmanager
def parameter_errors():
    """Re-raise a validation error (ValueError, FileNotFoundError) as a ParameterError: one line in the notebook."""
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        raise ParameterError(str(err)) from err


def check_parameters(namespace: dict) -> None:
    """Refuse injected parameters the notebook does not define, and values of another type than the default's.

    ``namespace`` is the notebook's ``globals()``. Without an injected cell in the history (the
    notebook run by hand) there is nothing injected to check.
    """
    cells = [cell for cell in namespace.get("In", []) if cell.strip()]
    injected = next((i for i in range(len(cells) - 1, -1, -1) if cells[i].startswith(INJECTED_HEADER)), None)
    if injected is None:
        return
    # The parameters cell: the nearest earlier cell made of assignments only (papermill runs it just before).
    declared = next((a for a in map(_assignments, reversed(cells[:injected])) if a is not None), {})
    for name in _assignments(cells[injected]) or {}:
        if name not in declared:
            hint = did_you_mean(name, declared) or f"; this notebook's parameters: {', '.join(declared)}"
            raise ParameterError(f"unknown parameter {name}{hint}")
        if declared[name] is not None:  # None: "the default" or "everything"; the library refuses one it cannot take
            with parameter_errors():
                check_type(f"parameter {name}", namespace[name], f"{type(declared[name]).__name__} | None",
                           declared[name])


def _assignments(source: str) -> dict | None:
    """name -> literal value (None where not a literal) of a cell made only of assignments; None for any other cell."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return None
    if not body or not all(isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)
                           for s in body):
        return None
    values = {}
    for statement in body:
        try:
            values[statement.targets[0].id] = ast.literal_eval(statement.value)
        except ValueError:
            values[statement.targets[0].id] = None
    return values


def kernel_config():
    """The kernel manager's configuration: CurveZMQ-encrypted channels where pyzmq supports them."""
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}}) if zmq.has("curve") else Config()


KERNEL_STARTS = 3  # tries at starting a notebook's kernel (see execute)


def execute(notebook: str | Path, output: str | Path, parameters: dict | None = None, **kwargs):
    """papermill.execute_notebook on an encrypted kernel, without a progress bar; returns the executed notebook.

    Kernels that separate processes start at the same moment can be handed the same free port (jupyter_client
    picks it before the kernel binds it; papermill issue 511): the loser dies before running any cell, so a
    fresh kernel is started, up to KERNEL_STARTS times, each retry said in one line on stderr.
    """
    import papermill

    for start in range(1, KERNEL_STARTS + 1):
        try:
            return papermill.execute_notebook(str(notebook), str(output), parameters=parameters or {},
                                              progress_bar=False, config=kernel_config(), **kwargs)
        except RuntimeError as error:
            if "Kernel died before replying to kernel_info" not in str(error) or start == KERNEL_STARTS:
                raise
            print(f"{notebook}: the kernel died as it started ({error}); starting another", file=sys.stderr)


def execute_in_new_process(notebook: str | Path, output: str | Path, parameters: dict, env: dict | None = None,
                           cwd: str | Path | None = None, started=None) -> subprocess.CompletedProcess:
    """``python -m mmlib.notebook`` in a fresh process (its own GPUs, its own failures)."""
    return call_module("mmlib.notebook", [str(notebook), str(output)], parameters, env, cwd, started)


def call_module(module: str, args: list[str], parameters: dict, env: dict | None = None,
                cwd: str | Path | None = None, started=None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS PARAMS.yaml`` in a fresh process, its output captured; the parameters are passed in
    a YAML file in the system's temp folder, so that a killed run leaves nothing beside its outputs.
    ``started(process)``, if given, receives the process (subprocess.Popen) once it runs."""
    import yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="mmlib-params-", delete=False) as f:
        yaml.safe_dump(parameters, f)
    command = [sys.executable, "-m", module, *args, f.name]
    try:
        with subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as process:
            if started is not None:
                started(process)
            stdout, stderr = process.communicate()
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    finally:
        os.unlink(f.name)


def main(argv: list[str] | None = None) -> int:
    """python -m mmlib.notebook IN OUT [PARAMS.yaml]: execute IN into OUT; a failure is one line and its exit code: 1
    for a failed cell (75 for a run stopped early by a time limit or signal, StoppedError's), else the error's
    (mmlib.errors: 3 for a notebook that cannot be read or written, for instance)."""
    import papermill
    import yaml

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python -m mmlib.notebook IN.ipynb OUT.ipynb [PARAMETERS.yaml]", file=sys.stderr)
        return 2
    parameters = yaml.safe_load(Path(args[2]).read_text()) if len(args) == 3 else {}
    own_stop_file = None
    if "stop_file" in parameters:  # a training job: orphaned (its sweep killed), its kernel stops at the epoch's end
        if parameters["stop_file"] is None:
            own_stop_file = new_stop_file()
            parameters["stop_file"] = str(own_stop_file)
        when_orphaned(Path(parameters["stop_file"]).touch)

    def execute_it() -> int:
        try:
            execute(args[0], args[1], parameters)
        except papermill.PapermillExecutionError as err:
            raise NotebookFailed(args[1], err) from None
        finally:
            if own_stop_file is not None:
                own_stop_file.unlink(missing_ok=True)
        return 0

    return exit_status(execute_it)


if __name__ == "__main__":
    sys.exit(main())
