"""The cells of a paper table laid out as Markdown, CSV and LaTeX (mmlib.report.cells gathers them).

Table 1 and the beyond table are laid out as the paper's Table 1: methods down, settings across,
once for the final and once for the best epoch. Tables 2, 3, quick and the ablation are grouped by
setting, one row per (beta, delta-) or method.
"""

import math
import re
from pathlib import Path

import pandas as pd

from mmlib import files, paper
from mmlib.report.cells import NOTE_SEPARATOR
from mmlib.report.results import EPOCHS

TITLES = {
    "table1": "Table 1: top-1 error (%) on imbalanced CIFAR-10 and CIFAR-100",
    "table2": "Table 2: MM-DRW's top-1 error (%) over beta and delta- on CIFAR-10",
    "table3": "Table 3: MM-DRW's top-1 error (%) over beta and delta- on CIFAR-100",
    "quick": "Quick check: top-1 error (%) on imbalanced digits",
    "beyond": "Beyond the paper: logit adjustment (Menon et al. 2021) and SAM on DRW (Rangwani et al. 2022), "
              "top-1 error (%) under the same protocol",
    "ablation": "Ablation: the released MM code's two departures one at a time, top-1 error (%)",
}
EPOCH_TITLES = {"final": "final epoch", "best": "best epoch (optimistic: chosen on the test set)"}
LEGENDS = {
    "wide": "Each cell: our top-1 error, mean ± std over n seeds [the paper's error, ours - paper]; "
            "MM rows name their variant: [equations] as the paper writes MM, [released code] as its code behaves, "
            "[first-label only] and [mask-zero only] with one of the released code's two departures; "
            "missing: no finished run; —: the paper has no such cell.",
    "grouped": "Our top-1 error, mean ± std over n seeds; MM rows name their variant ([equations], [released code], "
               "[first-label only] or [mask-zero only]); "
               "the best epoch is chosen on the test set (optimistic); "
               "many / medium / few: final-epoch error of the classes with > 100, 20-100, < 20 training images; "
               "missing: no finished run; —: no number.",
}



def render(df: pd.DataFrame, table: str) -> dict[str, str]:
    """The "md", "csv" and "tex" texts of a collected table.

    Table 1 is laid out as the paper's: methods down, settings across, once for the final and once
    for the best epoch. Tables 2, 3 and quick are grouped by setting, one row per (beta, delta-) or
    method. The released-code MM rows are shown (under their equations rows) once any of their runs
    exists: they are an alternative to the paper's equations, not part of its tables. The csv is
    the long DataFrame as it is.
    """
    if table not in paper.TABLES:
        raise ValueError(f"unknown table {table!r}; valid: {', '.join(paper.TABLES)}")
    others = sorted(set(df["table"]) - {table})
    if others:
        raise ValueError(f"asked to render {table}, but the rows are of {', '.join(others)}")
    shown = _shown_rows(df)
    if table in ("table1", "beyond"):
        legend = LEGENDS["wide"]
        blocks = [(EPOCH_TITLES[epoch], *_wide_grid(shown, epoch)) for epoch in EPOCHS]
    else:
        legend = LEGENDS["grouped"]
        blocks = [(label, *_setting_grid(rows)) for label, rows in shown.groupby("setting_label", sort=False)]
    md = [f"## {TITLES[table]}", "", legend, ""]
    tex = [f"% {TITLES[table]} (written by mmlib.report.render)", f"\\textbf{{{_tex_escape(TITLES[table])}}}\\\\",
           _tex_escape(legend), ""]
    for title, header, rows in blocks:
        md += [f"### {title}", "", markdown(header, rows), ""]
        tex += [f"\\textit{{{_tex_escape(title)}}}\\\\", _tabular(header, rows), ""]
    md += _notes(shown)
    if left_out(df):
        md += ["### Left out", "",
               "Finished runs in the cells' folders that are another experiment (trained with other "
               "parameters than the cell's protocol), not counted above:", ""]
        md += [f"- {line}" for line in left_out(df)] + [""]
    return {"md": "\n".join(md), "csv": df.to_csv(index=False), "tex": "\n".join(tex)}


def left_out(df: pd.DataFrame) -> list[str]:
    """"<run folder>: how it departs" of every run the gathered cells left out."""
    return [line for cell in df["left_out"] if cell for line in cell.split(NOTE_SEPARATOR)]


def write_table(df: pd.DataFrame, table: str, out_dir=None) -> list[Path]:
    """Write out_dir/<table>.md, .csv and .tex (default: the repository's figures/), each atomically; returns their
    paths."""
    paths = []
    for kind, text in render(df, table).items():
        path = Path(out_dir or files.FIGURES) / f"{table}.{kind}"
        files.write_text(path, text)
        paths.append(path)
    return paths


def _shown_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows to display: all but other MM variants' rows none of whose cells has a finished run (not in the
    ablation)."""
    row_has_runs = df.groupby("row")["seeds"].transform("sum") > 0
    return df[(df["variant"] == "equations") | (df["table"] == "ablation") | row_has_runs]


def _result_text(cell, epoch: str) -> str:
    """"mean ± std (n=k)" of one cell at the final or best epoch, or "missing"."""
    if cell.seeds == 0:
        return "missing"
    mean, std = getattr(cell, f"{epoch}_mean"), getattr(cell, f"{epoch}_std")
    spread = "" if math.isnan(std) else f" ± {std:.2f}"
    return f"{mean:.2f}{spread} (n={cell.seeds})"


def _compared_text(cell, epoch: str) -> str:
    """The result followed by "[paper, ours - paper]" where the paper has a number."""
    text = _result_text(cell, epoch)
    if math.isnan(cell.paper):
        return text
    if cell.seeds == 0:
        return f"{text} [{cell.paper:.2f}]"
    difference = getattr(cell, f"{epoch}_mean") - cell.paper
    return f"{text} [{cell.paper:.2f}, {difference:+.2f}]"


def number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def _wide_grid(df: pd.DataFrame, epoch: str) -> tuple[list[str], list[list[str]]]:
    """Table 1's layout: a row per method (the cells' order), a column per setting, "—" where there is no cell."""
    labels = dict(zip(df["setting"], df["setting_label"]))
    texts = {(cell.row, cell.setting): _compared_text(cell, epoch) for cell in df.itertuples()}
    header = ["Method"] + list(labels.values())
    rows = [[row] + [texts.get((row, s), "—") for s in labels] for row in dict.fromkeys(df["row"])]
    return header, rows


def _setting_grid(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """One setting of Tables 2, 3 or quick: a row per cell with both epochs, the paper and the group errors."""
    header = ["Method", "final epoch", "best epoch", "paper", "final - paper", "best - paper",
              "many (final)", "medium (final)", "few (final)"]
    rows = [
        [cell.row, _result_text(cell, "final"), _result_text(cell, "best"), number(cell.paper),
         _signed(cell.final_mean - cell.paper), _signed(cell.best_mean - cell.paper),
         number(cell.many_mean), number(cell.medium_mean), number(cell.few_mean)]
        for cell in df.itertuples()
    ]
    return header, rows


def _signed(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.2f}"


def _notes(df: pd.DataFrame) -> list[str]:
    """A Markdown list of the cells' notes, each note once with the rows (and settings) it concerns."""
    concerns: dict[str, dict[str, list[str]]] = {}
    for cell in df[df["note"] != ""].itertuples():
        for note in cell.note.split(NOTE_SEPARATOR):
            concerns.setdefault(note, {}).setdefault(cell.row, []).append(cell.setting_label)
    if not concerns:
        return []
    lines = ["### Notes", ""]
    for note, rows in concerns.items():
        where = [
            row if len(labels) == (df["row"] == row).sum() else f"{row} ({', '.join(labels)})"
            for row, labels in rows.items()
        ]
        lines.append(f"- {note}: {'; '.join(where)}")
    return lines + [""]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
    "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "—": "---",
}


def _tex_escape(text: str) -> str:
    """Plain text as LaTeX source: special characters escaped, ± and — as LaTeX writes them."""
    return re.sub("|".join(map(re.escape, TEX_ESCAPES)), lambda match: TEX_ESCAPES[match.group()], text)


def _tex_row(cells: list[str]) -> str:
    return " & ".join(map(_tex_escape, cells)) + r" \\"


def _tabular(header: list[str], rows: list[list[str]]) -> str:
    """A plain LaTeX tabular (no packages needed): first column left, the others centred, ruled header."""
    body = [r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\hline", _tex_row(header), r"\hline"]
    return "\n".join(body + [_tex_row(row) for row in rows] + [r"\hline", r"\end{tabular}"])


