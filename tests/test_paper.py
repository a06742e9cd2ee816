"""The tables as data hold the paper's numbers and hyper-parameters, cell by cell."""

import subprocess
import sys

import pytest

from mmlib import paper
from mmlib.config import RunConfig

# The paper's Table 1 as printed (tab-separated), and Cao et al.'s Table 5 rows.
TABLE1_TEXT = """\
ERM	29.64	13.61	36.70	17.50	61.68	44.30	61.45	45.37
Focal	29.62	13.34	36.09	16.36	61.59	44.22	61.43	46.54
LDAM	26.65	13.04	33.42	15.00	60.40	43.09	60.42	43.73
MM	26.56	12.34	33.19	13.99	60.29	42.63	60.25	43.55
CB RS	29.45	13.21	38.14	15.41	66.56	44.94	66.23	46.92
CB RW	27.63	13.46	38.06	16.20	66.01	42.88	78.69	47.52
CB Focal	25.43	12.90	39.73	16.54	63.98	42.01	80.24	49.98
HG-DRS	27.16	14.03	29.93	14.85	-	-	-	-
LDAM-HG-DRS	24.42	12.72	24.53	12.82	-	-	-	-
M-DRW	24.94	13.57	27.67	13.17	59.49	43.78	58.91	44.72
LDAM-DRW	22.97	11.84	23.08	12.19	57.96	41.29	54.64	40.54
LDAM-DRW + SSP	22.17	11.47	22.95	11.83	56.57	41.09	54.28	40.33
MM-DRW	21.98	11.44	22.83	11.48	57.14	40.63	54.57	40.28
MM-LDAM-DRW	21.37	11.26	21.82	11.33	56.53	40.54	53.70	40.07
ERM-DRW	25.14	13.12	28.40	14.49	59.34	42.68	58.86	42.78
ERM-DRS	25.50	13.28	27.97	14.83	59.67	42.74	58.65	43.21
"""
ROW_TO_METHOD = {
    "ERM": "erm", "Focal": "focal", "LDAM": "ldam", "MM": "mm", "CB RS": "cb-rs", "CB RW": "cb-rw",
    "CB Focal": "cb-focal", "HG-DRS": "hg-drs", "LDAM-HG-DRS": "ldam-hg-drs", "M-DRW": "m-drw",
    "LDAM-DRW": "ldam-drw", "LDAM-DRW + SSP": "ldam-drw-ssp", "MM-DRW": "mm-drw", "MM-LDAM-DRW": "mm-ldam-drw",
    "ERM-DRW": "erm-drw", "ERM-DRS": "erm-drs",
}
COLUMNS = ["cifar10-exp-100", "cifar10-exp-10", "cifar10-step-100", "cifar10-step-10",
           "cifar100-exp-100", "cifar100-exp-10", "cifar100-step-100", "cifar100-step-10"]
# Tables 2 and 3 as printed: per setting, rows of (error, beta / delta^-).
TABLE23_TEXT = {
    "cifar10-exp-100": "22.24 1.4/0.6, 21.98 1.5/0.6, 22.43 1.6/0.6",
    "cifar10-step-100": "22.92 1.2/0.6, 22.83 1.3/0.6, 23.29 1.4/0.6",
    "cifar10-exp-10": "11.66 1.1/0.7, 11.44 1.2/0.7, 11.86 1.3/0.7",
    "cifar10-step-10": "11.48 1.0/2.1, 11.64 1.1/2.1, 11.78 1.2/2.1",
    "cifar100-exp-100": "58.02 1.2/1.2, 57.14 1.3/1.2, 57.24 1.4/1.2",
    "cifar100-step-100": "54.65 1.7/1.8, 54.57 1.8/1.8, 54.76 1.9/1.8",
    "cifar100-exp-10": "40.97 1.3/1.5, 40.63 1.4/1.5, 40.95 1.5/1.5",
    "cifar100-step-10": "40.42 1.0/2.4, 40.28 1.1/2.4, 40.48 1.2/2.4",
}


def parsed_grid(setting):
    rows = []
    for item in TABLE23_TEXT[setting].split(", "):
        error, pair = item.split()
        beta, delta_neg = pair.split("/")
        rows.append((float(beta), float(delta_neg), float(error)))
    return rows


def test_table1_holds_every_filled_cell_of_the_paper_and_no_blank_one():
    expected = {}
    for line in TABLE1_TEXT.splitlines():
        row, *values = line.split("\t")
        for setting, value in zip(COLUMNS, values):
            if value != "-":
                expected[(ROW_TO_METHOD[row], setting)] = float(value)
    got = {(c.method, c.setting.name): c.paper_error for c in paper.cells("table1")}
    assert got == expected


@pytest.mark.parametrize("table", ["table2", "table3"])
def test_beta_tables_hold_the_papers_grid(table):
    settings = [s for s in TABLE23_TEXT if s.startswith("cifar10-") == (table == "table2")]
    expected = {(s, beta, d): err for s in settings for beta, d, err in parsed_grid(s)}
    got = {(c.setting.name, c.params["beta"], c.params["delta_neg"]): c.paper_error for c in paper.cells(table)}
    assert got == expected
    assert all(c.method == "mm-drw" and c.params["s"] == 10.0 for c in paper.cells(table))


def test_table1_mm_rows_use_the_best_cell_of_tables_2_and_3():
    for cell in paper.cells("table1", methods=["mm", "mm-drw", "mm-ldam-drw"]):
        best_beta, best_delta, best_error = min(parsed_grid(cell.setting.name), key=lambda r: r[2])
        assert (cell.params["beta"], cell.params["delta_neg"], cell.params["s"]) == (best_beta, best_delta, 10.0)
        if cell.method == "mm-drw":
            assert cell.paper_error == best_error  # Table 1's MM-DRW row is the bold cell of Table 2/3


def test_every_cell_is_a_valid_run_configuration():
    for table in paper.TABLES:
        for cell in paper.cells(table, mm_variants=("equations", "released")):
            params = cell.run_params(epochs=2)
            if params["dataset"] != "digits":
                params["download"] = True  # validation only: no data root is needed to check the rest
                params["data_root"] = "/nonexistent"
            config = RunConfig.from_dict(params).resolve()
            assert config.method == cell.method and config.ratio == cell.setting.ratio


def test_variants_double_the_mm_cells_into_distinct_run_folders():
    both = paper.cells("table1", mm_variants=("equations", "released"))
    one = paper.cells("table1")
    mm_cells = [c for c in one if c.method.startswith("mm")]
    assert len(both) == len(one) + len(mm_cells)
    assert len({c.path("runs") for c in both}) == len(both)
    released = [c for c in both if c.variant == "released"]
    assert all(c.run_name.endswith("-released") and c.params["mm_variant"] == "released" for c in released)


def test_cell_paths_and_scale_override():
    cell = paper.cells("table2", settings=["cifar10-exp-100"], mm_scale=19.0)[0]
    assert str(cell.path("runs")) == "runs/table2/cifar10-exp-100/mm-drw-beta1.4-dneg0.6-s19"
    assert cell.params["s"] == 19.0


def test_filters_and_errors():
    assert {c.setting.name for c in paper.cells("table1", settings=["cifar100-step-10"])} == {"cifar100-step-10"}
    with pytest.raises(ValueError, match="unknown table 'table4'"):
        paper.cells("table4")
    with pytest.raises(ValueError, match="table1 has no settings cifar10-exp-50"):
        paper.cells("table1", settings=["cifar10-exp-50"])
    with pytest.raises(ValueError, match="table2 has no methods erm"):
        paper.cells("table2", methods=["erm"])
    with pytest.raises(ValueError, match="mm_variants"):
        paper.cells("table1", mm_variants=("paper",))


def test_cells_come_in_the_order_methods_and_variants_name_them():
    cells = paper.cells("table1", settings=["cifar10-exp-100"], methods=["ldam-drw", "mm-drw", "erm"],
                        mm_variants=("released", "equations"))
    assert [c.run_name for c in cells] == ["ldam-drw", "mm-drw-released", "mm-drw", "erm"]
    table_order = [c.name for c in paper.cells("table1", settings=["cifar10-exp-100"])]
    assert table_order.index("erm") < table_order.index("ldam-drw") < table_order.index("mm-drw")


def test_cli_lists_cells_with_the_papers_numbers():
    out = subprocess.run([sys.executable, "-m", "mmlib", "list", "table1", "--methods", "mm-drw", "--settings",
                          "cifar10-exp-100", "--mm-variants", "equations", "released"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 2
    table, setting, run_name, params, error = out[1].split("\t")
    assert (table, setting, run_name, error) == ("table1", "cifar10-exp-100", "mm-drw-released", "21.98")
    assert "beta=1.5" in params and "delta_neg=0.6" in params and "mm_variant=released" in params


def test_the_beyond_table_holds_the_sam_rows_with_the_published_errors():
    cells = [c for c in paper.cells("beyond") if c.name.endswith("-sam")]
    assert [(c.name, c.setting.name) for c in cells] == [
        (row, s) for row in ("ce-drw-sam", "ldam-drw-sam", "mm-drw-sam") for s in paper.SETTINGS]
    published = {(c.name, c.setting.name): c.paper_error for c in cells if c.paper_error is not None}
    # Rangwani et al.'s README: top-1 accuracy 80.6 / 44.6 (CE+DRW+SAM), 81.9 / 45.4 (LDAM+DRW+SAM)
    assert published == pytest.approx({
        ("ce-drw-sam", "cifar10-exp-100"): 100 - 80.6, ("ce-drw-sam", "cifar100-exp-100"): 100 - 44.6,
        ("ldam-drw-sam", "cifar10-exp-100"): 100 - 81.9, ("ldam-drw-sam", "cifar100-exp-100"): 100 - 45.4}, abs=1e-9)
    rho = {(c.name, c.setting.dataset): c.params["sam_rho"] for c in cells}
    assert rho == {("ce-drw-sam", "cifar10"): 0.5, ("ldam-drw-sam", "cifar10"): 0.8, ("mm-drw-sam", "cifar10"): 0.8,
                   ("ce-drw-sam", "cifar100"): 0.8, ("ldam-drw-sam", "cifar100"): 0.8, ("mm-drw-sam", "cifar100"): 0.8}
    for cell in cells:
        base = paper.cells("table1", [cell.setting.name], [cell.method])[0]
        assert cell.method == paper.SAM_ROWS[cell.name]
        assert cell.params == {**base.params, "sam_rho": rho[cell.name, cell.setting.dataset]}
        assert cell.run_name == cell.name and cell.label == base.label + " + SAM"
        assert ("Rangwani" in cell.notes[0]) and (cell.paper_error is None) == ("no published number" in cell.notes[0])
    released = paper.cells("beyond", methods=["mm-drw-sam"], mm_variants=("equations", "released"))
    assert [c.run_name for c in released[:2]] == ["mm-drw-sam", "mm-drw-sam-released"]
