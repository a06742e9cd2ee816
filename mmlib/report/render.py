"""The report: the table and figure notebooks executed against finished runs, into figures/.

``report`` executes a table notebook per table (mmlib.report.cells and mmlib.report.tables), the Fig. 1-3
notebooks and compare.ipynb with papermill, then writes reproduction.md (mmlib.report.reproduction).
"""

import concurrent.futures
import json
from pathlib import Path

import papermill

import mmlib.notebook
from mmlib import files, paper
from mmlib.report import cells
from mmlib.report.reproduction import reproduction

NOTEBOOKS = files.REPOSITORY / "notebooks"
REPORT_TABLES = tuple(t for t in paper.TABLES if t != "quick")
FIGURE_NOTEBOOKS = [("fig1_class_counts.ipynb", {}), ("fig2_toy.ipynb", {}), ("fig3_per_class.ipynb", {}),
                    ("compare.ipynb", {})]
QUICK_NOTEBOOKS = [("table1.ipynb", {"table": "quick"}),
                   ("fig3_per_class.ipynb", {"table": "quick", "settings": None, "methods": None,
                                             "name": "fig3_quick"})]
REPRODUCTION = "reproduction.md"


def report_notebooks(tables=REPORT_TABLES) -> list[tuple[str, dict]]:
    """The notebooks of the report and their parameters: a table notebook per table (notebooks/<table>.ipynb,
    else table1.ipynb rendering it), then the figures' notebooks."""
    return [((f"{t}.ipynb" if (NOTEBOOKS / f"{t}.ipynb").exists() else "table1.ipynb"), {"table": t})
            for t in tables] + FIGURE_NOTEBOOKS


def run_notebooks(notebooks: list[tuple[str, dict]], results_root, out_dir, log=print, workers: int = 2,
                  protocol: dict | None = None) -> list[Path]:
    """Execute each notebook with papermill against results_root, writing into out_dir; the executed
    notebooks land in out_dir/notebooks. A failing notebook does not stop the others; returns the failed ones.
    protocol: run parameters the runs took beyond their cells' (mmlib.report.cells.cell_runs), for the notebooks
    that take it."""
    results_root, out_dir = Path(results_root).resolve(), Path(out_dir).resolve()
    cells.existing_folder(results_root)
    executed_dir = out_dir / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)

    def execute(item: tuple[str, dict]) -> Path | None:
        notebook, params = item
        name = params.get("name", params.get("table", Path(notebook).stem))  # fig3 of a table has a name of its own
        executed = executed_dir / f"{name}.ipynb"
        parameters = {"out_dir": str(out_dir), **params}
        names = papermill.inspect_notebook(str(NOTEBOOKS / notebook))  # its parameters cell's names
        if "results_root" in names:
            parameters["results_root"] = str(results_root)
        if protocol is not None and "protocol" in names:
            parameters["protocol"] = protocol
        done = mmlib.notebook.execute_in_new_process(NOTEBOOKS / notebook, executed, parameters, cwd=files.REPOSITORY)
        if done.returncode:
            error = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["no message"]
            log(f"FAILED {notebook} {params or ''}: {error[0]} (see {executed})")
            return executed
        log(f"{notebook} {params or ''}: {', '.join(_written(executed)) or 'nothing written'}")
        return None

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [path for path in pool.map(execute, notebooks) if path is not None]


def _written(executed: Path) -> list[str]:
    """What an executed notebook says it wrote ("wrote PATH" lines), found missing ("missing: ...") or left out
    ("left out: ...": runs of other parameters)."""
    lines = []
    for cell in json.loads(executed.read_text())["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            for line in (text if isinstance(text, str) else "".join(text)).splitlines():
                if line.startswith("wrote "):
                    lines.append(Path(line[len("wrote "):]).name)
                elif line.startswith(("missing", "left out")):
                    lines.append(line)
    return lines


def report(results_root=None, out_dir=None, tables=REPORT_TABLES, log=print,
           protocol: dict | None = None) -> list[Path]:
    """Every table, figure and the reproduction summary from results_root (default results/) into out_dir
    (default figures/); returns the failed notebooks. protocol: as run_notebooks'."""
    results_root = cells.existing_folder(results_root)
    out_dir = Path(out_dir or files.FIGURES)
    failed = run_notebooks(report_notebooks(tables), results_root, out_dir, log, protocol=protocol)
    summary = reproduction({t: cells.gather(t, results_root, protocol=protocol) for t in tables})
    files.write_text(out_dir / REPRODUCTION, summary)
    log(f"wrote {out_dir / REPRODUCTION}")
    return failed


def report_quick(runs_root, protocol: dict, log=print) -> list[Path]:
    """The quick preset's table and per-class figure (every trained method on every quick setting, what is
    missing said so) into <runs_root>/quick/figures, never figures/; returns the notebooks that failed.
    protocol: the run parameters the preset's runs took beyond their cells' (its overrides, --epochs, --set)."""
    return run_notebooks(QUICK_NOTEBOOKS, runs_root, Path(runs_root) / "quick" / "figures", log, protocol=protocol)
