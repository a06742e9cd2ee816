"""The paper's Tables 1-3 as data: every cell's setting, method, hyper-parameters and reported error.

Besides table1, table2 and table3 there is "quick": ERM, LDAM-DRW and MM-DRW on the offline digits
dataset (long-tailed and step, ratio 10), no paper numbers, for the quick preset and the tests; and two
tables beyond the paper: "beyond" (logit adjustment, Menon et al. ICLR 2021, and sharpness-aware
minimization on DRW, Rangwani et al. NeurIPS 2022, on Table 1's 8 settings) and "ablation" (MM-DRW and
MM-LDAM-DRW with each of the released code's departures alone).

Table 1 holds the 14 rows of the paper plus Cao et al.'s ERM-DRW and ERM-DRS (their Table 5);
cells the paper leaves blank (HG rows on CIFAR-100) are absent. The MM rows take (beta, delta^-) of
Tables 2 and 3's best cells per setting, as the paper says it did, and the paper's stated scale
s = 10; the released scripts used other scales for some cells, noted where known. Every MM cell can
run as the paper's equations or as the released code behaves (``mm_variant``).
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

from mmlib import config
from mmlib.choices import MM_VARIANTS, get_method

TABLES = ("table1", "table2", "table3", "quick", "beyond", "ablation")


@dataclass(frozen=True)
class Setting:
    dataset: str
    imb_type: str
    ratio: float

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.imb_type}-{self.ratio:g}"

    @property
    def label(self) -> str:
        dataset = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(self.dataset, self.dataset)
        kind = {"exp": "long-tailed", "step": "step"}.get(self.imb_type, self.imb_type)
        return f"{dataset} {kind} {self.ratio:g}"


# Table 1's column order.
SETTINGS = {
    s.name: s
    for s in [
        Setting(dataset, imb_type, ratio)
        for dataset in ("cifar10", "cifar100")
        for imb_type in ("exp", "step")
        for ratio in (100.0, 10.0)
    ]
}
_COLUMNS = list(SETTINGS)

# Top-1 validation error (%) in Table 1's column order; None where the paper leaves the cell blank.
TABLE1_ERRORS = {
    "erm": [29.64, 13.61, 36.70, 17.50, 61.68, 44.30, 61.45, 45.37],
    "focal": [29.62, 13.34, 36.09, 16.36, 61.59, 44.22, 61.43, 46.54],
    "ldam": [26.65, 13.04, 33.42, 15.00, 60.40, 43.09, 60.42, 43.73],
    "mm": [26.56, 12.34, 33.19, 13.99, 60.29, 42.63, 60.25, 43.55],
    "cb-rs": [29.45, 13.21, 38.14, 15.41, 66.56, 44.94, 66.23, 46.92],
    "cb-rw": [27.63, 13.46, 38.06, 16.20, 66.01, 42.88, 78.69, 47.52],
    "cb-focal": [25.43, 12.90, 39.73, 16.54, 63.98, 42.01, 80.24, 49.98],
    "hg-drs": [27.16, 14.03, 29.93, 14.85, None, None, None, None],
    "ldam-hg-drs": [24.42, 12.72, 24.53, 12.82, None, None, None, None],
    "m-drw": [24.94, 13.57, 27.67, 13.17, 59.49, 43.78, 58.91, 44.72],
    "ldam-drw": [22.97, 11.84, 23.08, 12.19, 57.96, 41.29, 54.64, 40.54],
    "ldam-drw-ssp": [22.17, 11.47, 22.95, 11.83, 56.57, 41.09, 54.28, 40.33],
    "mm-drw": [21.98, 11.44, 22.83, 11.48, 57.14, 40.63, 54.57, 40.28],
    "mm-ldam-drw": [21.37, 11.26, 21.82, 11.33, 56.53, 40.54, 53.70, 40.07],
    "erm-drw": [25.14, 13.12, 28.40, 14.49, 59.34, 42.68, 58.86, 42.78],  # Cao et al. 2019, Table 5
    "erm-drs": [25.50, 13.28, 27.97, 14.83, 59.67, 42.74, 58.65, 43.21],  # Cao et al. 2019, Table 5
}

# Tables 2 (CIFAR-10) and 3 (CIFAR-100): MM-DRW's (beta, delta^-) grid per setting and its error.
BETA_GRIDS = {
    "table2": {
        "cifar10-exp-100": [(1.4, 0.6, 22.24), (1.5, 0.6, 21.98), (1.6, 0.6, 22.43)],
        "cifar10-step-100": [(1.2, 0.6, 22.92), (1.3, 0.6, 22.83), (1.4, 0.6, 23.29)],
        "cifar10-exp-10": [(1.1, 0.7, 11.66), (1.2, 0.7, 11.44), (1.3, 0.7, 11.86)],
        "cifar10-step-10": [(1.0, 2.1, 11.48), (1.1, 2.1, 11.64), (1.2, 2.1, 11.78)],
    },
    "table3": {
        "cifar100-exp-100": [(1.2, 1.2, 58.02), (1.3, 1.2, 57.14), (1.4, 1.2, 57.24)],
        "cifar100-step-100": [(1.7, 1.8, 54.65), (1.8, 1.8, 54.57), (1.9, 1.8, 54.76)],
        "cifar100-exp-10": [(1.3, 1.5, 40.97), (1.4, 1.5, 40.63), (1.5, 1.5, 40.95)],
        "cifar100-step-10": [(1.0, 2.4, 40.42), (1.1, 2.4, 40.28), (1.2, 2.4, 40.48)],
    },
}

PAPER_SCALE = 10.0  # "we then scale the logits by a constant s = 10" (Sec. 3.1)
LDAM_SCALE = 30.0  # LDAM-DRW's released code

# Hyper-parameters seen in the released scripts, where they differ from the paper's tables.
RELEASED_NOTES = {
    ("cifar100-exp-100", "mm"): "released script: s=19, delta_neg=1.29, beta=1.528",
    ("cifar100-exp-100", "mm-drw"): "released script (MM): s=19, delta_neg=1.29, beta=1.528",
    ("cifar100-exp-100", "mm-ldam-drw"): "released script: s=26, delta_neg=1.29, beta=1.528",
    ("cifar10-exp-10", "mm"): "earlier released commit: s=10, delta_neg=2.7, beta=1.0",
    ("cifar100-step-10", "mm-ldam-drw"): "earlier released commit: s=17, delta_neg=0.5, beta=1.0",
}


def _best_mm(setting: str) -> tuple[float, float]:
    """(beta, delta^-) of the bold cell of Table 2 or 3 for this setting (the one Table 1 reports)."""
    grid = BETA_GRIDS["table2" if setting.startswith("cifar10-") else "table3"][setting]
    beta, delta_neg, _ = min(grid, key=lambda cell: cell[2])
    return beta, delta_neg


# Beyond the paper: logit adjustment under the same protocol (Table 1's 8 settings).
BEYOND_METHODS = ("la", "la-drw", "erm-posthoc")
# Published top-1 errors (%) of these methods in Table 1's column order, None where there is none.
# A cell is to be entered only when read in the paper itself, with paper and table cited beside it;
# none could be read here (see BEYOND_NOTE), so every cell is blank.
BEYOND_ERRORS = {method: [None] * len(_COLUMNS) for method in BEYOND_METHODS}
BEYOND_NOTE = (
    "no published number entered: Menon et al. (ICLR 2021) report the logit-adjusted loss and post-hoc "
    "adjustment on CIFAR-10/100-LT ratio 100 with ResNet-32, as balanced error under their own schedule (SGD with "
    "Nesterov momentum), and Ren et al. (NeurIPS 2020) Balanced Softmax under theirs, not the LDAM-DRW protocol; "
    "their tables could not be read here to check the numbers"
)

# Beyond the paper: sharpness-aware minimization (SAM, mmlib.train.step) on top of DRW, the strongest simple method
# published on this protocol (ResNet-32, 200 epochs, batch 128, LDAM-DRW's schedule and subsets): Rangwani et al.,
# "Escaping Saddle Points for Effective Generalization on Class-Imbalanced Data", NeurIPS 2022. A row runs its base
# method with the run parameter sam_rho; its name (the run folder's) says SAM.
SAM_ROWS = {"ce-drw-sam": "erm-drw", "ldam-drw-sam": "ldam-drw", "mm-drw-sam": "mm-drw"}  # row: base method
# rho per dataset: github.com/val-iisc/Saddle-LongTail, run.sh (CIFAR-10-LT-100: CE-DRW 0.5, LDAM-DRW 0.8;
# CIFAR-100-LT-100: both 0.8; constant over training, --rho_schedule none). MM-DRW, a margin loss on the same
# cosine head, takes LDAM-DRW's; the dataset's other settings take its long-tailed 100 values.
SAM_RHO = {
    "cifar10": {"ce-drw-sam": 0.5, "ldam-drw-sam": 0.8, "mm-drw-sam": 0.8},
    "cifar100": {"ce-drw-sam": 0.8, "ldam-drw-sam": 0.8, "mm-drw-sam": 0.8},
}
# Published top-1 errors (%): 100 minus the top-1 accuracy in the repository's README ("Results and Checkpoints":
# CIFAR-10 LT IF=100: LDAM+DRW+SAM 81.9, CE+DRW+SAM 80.6; CIFAR-100 LT IF=100: 45.4, 44.6).
SAM_ERRORS = {
    "ce-drw-sam": {"cifar10-exp-100": 19.4, "cifar100-exp-100": 55.4},
    "ldam-drw-sam": {"cifar10-exp-100": 18.1, "cifar100-exp-100": 54.6},
}
SAM_PUBLISHED_NOTE = (
    "paper: Rangwani et al. (NeurIPS 2022), 100 minus the top-1 accuracy in github.com/val-iisc/Saddle-LongTail "
    "README.md; rho from its run.sh; their cifar_train_sam.py keeps the best test accuracy over epochs, and which "
    "epoch the README reports is not stated"
)
SAM_UNPUBLISHED_NOTE = ("no published number: Rangwani et al. report CE-DRW + SAM and LDAM-DRW + SAM on the "
                        "long-tailed 100 settings only; rho: the dataset's long-tailed 100 value")
SAM_MM_NOTE = "no published number: MM with SAM is not in Rangwani et al.; rho: LDAM-DRW + SAM's on the dataset"

# The released MM code's departures one at a time (mm_variant), on these settings by default.
ABLATION_METHODS = ("mm-drw", "mm-ldam-drw")
ABLATION_SETTINGS = ("cifar10-exp-100", "cifar100-exp-100")
ABLATION_NOTE = "paper: Table 1's number for the row; the paper does not say which variant produced it"
VARIANT_NAMES = {"equations": "equations", "first-label": "first-label only", "mask-zero": "mask-zero only",
                 "released": "released code"}  # every mm_variant, as tables and summaries name it
VARIANT_LABELS = {v: f"[{name}]" for v, name in VARIANT_NAMES.items() if v != "equations"}  # beside a row's label


@dataclass(frozen=True)
class Cell:
    """One configuration of a paper table: what to run and what the paper reports for it."""

    table: str
    setting: Setting
    method: str
    params: dict = field(default_factory=dict, hash=False)  # run parameters beyond the setting's
    paper_error: float | None = None
    notes: tuple[str, ...] = ()  # caveats: unpublished values, what the released scripts used
    row: str = ""  # the row's name where it is not the method's (ldam-drw-sam: ldam-drw with sam_rho)

    @property
    def name(self) -> str:
        """The row's name: what --methods, compare's pairs and the run folder call it."""
        return self.row or self.method

    @property
    def variant(self) -> str:
        return self.params.get("mm_variant", "equations")

    @property
    def run_name(self) -> str:
        """The cell's folder under runs/<table>/<setting>/."""
        name = self.name
        if self.table in ("table2", "table3"):
            name += f"-beta{self.params['beta']:g}-dneg{self.params['delta_neg']:g}"
        if "s" in self.params and self.params["s"] != PAPER_SCALE and self.method.startswith("mm"):
            name += f"-s{self.params['s']:g}"
        return name + ("" if self.variant == "equations" else f"-{self.variant}")

    @property
    def label(self) -> str:
        """The row as the paper writes it, with the MM variant when it is not the equations."""
        label = get_method(self.method).label + (" + SAM" if self.params.get("sam_rho") else "")
        if self.table in ("table2", "table3"):
            label += f" beta={self.params['beta']:g} / delta-={self.params['delta_neg']:g}"
        return label + (f" {VARIANT_LABELS[self.variant]}" if self.variant in VARIANT_LABELS else "")

    def path(self, runs_root) -> Path:
        """Where the cell's runs live: <runs_root>/<table>/<setting>/<run_name>/seed<k>."""
        return Path(runs_root) / self.table / self.setting.name / self.run_name

    def run_params(self, **overrides) -> dict:
        """The RunConfig parameters of this cell (setting, method, hyper-parameters), then the overrides."""
        return {
            "method": self.method,
            "dataset": self.setting.dataset,
            "imb_type": self.setting.imb_type,
            "ratio": self.setting.ratio,
            **self.params,
            **overrides,
        }


QUICK_SETTINGS = [Setting("digits", "exp", 10.0), Setting("digits", "step", 10.0)]
# Run parameters a table's runs take beyond their cells' (the protocol's defaults otherwise): the quick
# table's few minutes on a CPU.
PROTOCOLS = {"quick": {"arch": "resnet8", "epochs": 20, "batch_size": 32}}
QUICK_METHODS = ("erm", "ldam-drw", "mm-drw")
QUICK_MM = (1.5, 0.6)  # (beta, delta^-): Table 2's best for CIFAR-10 long-tailed 100


def _mm_cells(table: str, setting: Setting, method: str, beta: float, delta_neg: float, error, variants,
              scale) -> list[Cell]:
    notes = [RELEASED_NOTES.get((setting.name, method), "")]
    if scale is None:
        notes.insert(0, "s=10 as the paper states; the scale of each cell was not published")
    if table in ("table1", "ablation") and method != "mm-drw":
        notes.insert(0, "beta and delta_neg of MM-DRW's best cell in Table 2/3 (the paper gives none for this row)")
    notes = tuple(filter(None, notes))
    return [
        Cell(table, setting, method,
             {"delta_neg": delta_neg, "beta": beta, "s": PAPER_SCALE if scale is None else scale, "mm_variant": v},
             error, notes)
        for v in variants
    ]


def cells(table: str, settings=None, methods=None, mm_variants=("equations",),
          mm_scale: float | None = None) -> list[Cell]:
    """The cells of ``table``, optionally only some settings / methods (then in the order ``methods`` names them,
    e.g. a campaign's most wanted rows first); MM cells once per variant, in the order of ``mm_variants``.

    mm_scale overrides the MM cells' scale s (default: the paper's s = 10). The ablation table holds
    every variant whatever mm_variants says, on ABLATION_SETTINGS unless settings names others.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; valid: {', '.join(TABLES)}")
    bad = [v for v in mm_variants if v not in MM_VARIANTS]
    if bad or not mm_variants:
        raise ValueError(f"mm_variants must be among {', '.join(MM_VARIANTS)}, got {list(mm_variants)}")
    if mm_scale is not None and not mm_scale > 0:
        raise ValueError(f"mm_scale must be > 0, got {mm_scale}")
    out = []
    if table == "table1":
        for method, errors in TABLE1_ERRORS.items():
            for setting, error in zip(_COLUMNS, errors):
                if error is None:
                    continue
                if method.startswith("mm"):
                    beta, delta_neg = _best_mm(setting)
                    out += _mm_cells(table, SETTINGS[setting], method, beta, delta_neg, error, mm_variants, mm_scale)
                else:
                    params = {"s": LDAM_SCALE} if get_method(method).loss == "ldam" else {}
                    out.append(Cell(table, SETTINGS[setting], method, params, error))
    elif table == "quick":
        for setting in QUICK_SETTINGS:
            for method in QUICK_METHODS:
                if method.startswith("mm"):
                    out += _mm_cells(table, setting, method, *QUICK_MM, None, mm_variants, mm_scale)
                else:
                    out.append(Cell(table, setting, method, {"s": LDAM_SCALE} if method == "ldam-drw" else {}))
    elif table == "beyond":
        for method, errors in BEYOND_ERRORS.items():
            for setting, error in zip(_COLUMNS, errors):
                out.append(Cell(table, SETTINGS[setting], method, {}, error,
                                () if error is not None else (BEYOND_NOTE,)))
        out += _sam_cells(mm_variants, mm_scale)
    elif table == "ablation":
        unknown = sorted(set(settings or ()) - set(SETTINGS))
        if unknown:
            raise ValueError(f"{table} has no settings {', '.join(unknown)}; valid: {', '.join(SETTINGS)}")
        for setting in settings or ABLATION_SETTINGS:
            beta, delta_neg = _best_mm(setting)
            for method in ABLATION_METHODS:
                error = TABLE1_ERRORS[method][_COLUMNS.index(setting)]
                out += [replace(c, notes=(ABLATION_NOTE, *c.notes)) for c in
                        _mm_cells(table, SETTINGS[setting], method, beta, delta_neg, error, MM_VARIANTS, mm_scale)]
    else:
        for setting, grid in BETA_GRIDS[table].items():
            for beta, delta_neg, error in grid:
                out += _mm_cells(table, SETTINGS[setting], "mm-drw", beta, delta_neg, error, mm_variants, mm_scale)
    available = {c.setting.name for c in out}, {c.name for c in out}
    for name, chosen, valid in (("settings", settings, available[0]), ("methods", methods, available[1])):
        unknown = sorted(set(chosen or ()) - valid)
        if unknown:
            raise ValueError(f"{table} has no {name} {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    chosen = [c for c in out if (not settings or c.setting.name in settings) and (not methods or c.name in methods)]
    return sorted(chosen, key=lambda c: list(methods).index(c.name)) if methods else chosen  # in the order named


def _sam_cells(mm_variants, mm_scale) -> list[Cell]:
    """The beyond table's SAM rows on Table 1's settings: each base method's cell with sam_rho, named as the row."""
    out = []
    for row, method in SAM_ROWS.items():
        for name in _COLUMNS:
            setting, error = SETTINGS[name], SAM_ERRORS.get(row, {}).get(name)
            if error is not None:
                note = SAM_PUBLISHED_NOTE
            else:
                note = SAM_UNPUBLISHED_NOTE if row in SAM_ERRORS else SAM_MM_NOTE
            if method.startswith("mm"):
                base = _mm_cells("beyond", setting, method, *_best_mm(name), error, mm_variants, mm_scale)
            else:
                base = [Cell("beyond", setting, method, {"s": LDAM_SCALE} if method == "ldam-drw" else {}, error)]
            rho = SAM_RHO[setting.dataset][row]
            out += [replace(c, params={**c.params, "sam_rho": rho}, notes=(note, *c.notes), row=row) for c in base]
    return out


def cell_at(table: str, setting: str, run_name: str) -> Cell | None:
    """The cell whose runs live in <table>/<setting>/<run_name> (any MM variant, the paper's MM scale), or None."""
    found = [c for c in cells(table, mm_variants=MM_VARIANTS) if c.setting.name == setting and c.run_name == run_name]
    return found[0] if found else None


def protocol(cell: Cell, seed: int, overrides: dict | None = None) -> dict:
    """The resolved configuration a cell's run of ``seed`` trains with under its table's protocol
    (PROTOCOLS), or under ``overrides`` of the cell's parameters where given (e.g. {"epochs": 30})."""
    extra = PROTOCOLS.get(cell.table, {}) if overrides is None else overrides
    return config.resolved(cell.run_params(**extra, seed=seed))


def departures(cell: Cell, recorded: dict, seed: int,
               overrides: dict | None = None) -> list[tuple[str, object, object]]:
    """How a run's recorded configuration departs from its cell's protocol for ``seed`` (the seed its folder names):
    config.differences() of the two, incidental and speed parameters free; none for that seed of the cell."""
    return config.differences(recorded, protocol(cell, seed, overrides), free=config.INCIDENTAL | config.SPEED)
