"""Beyond the paper: logit adjustment as methods, the MM ablation table, and paired runs over seeds."""

import math

import pytest
import torch
from helpers.tiny import quick

from mmlib import paper
from mmlib.__main__ import main
from mmlib.choices import MM_VARIANTS
from mmlib.config import RunConfig
from mmlib.data.pipeline import TrainStream, eval_batches, to_device
from mmlib.data.sources import load_dataset
from mmlib.report import cells, tables
from mmlib.train import run_folder, trainer
from mmlib.train.models import build_model

# --- post-hoc logit adjustment --------------------------------------------------------------


@pytest.mark.slow
def test_erm_posthoc_trains_as_erm_and_predicts_with_adjusted_logits(tmp_path):
    digits = load_dataset("digits", imb_type="exp", ratio=10.0)
    erm = trainer.train(quick(method="erm", seed=3), tmp_path / "erm")
    posthoc = trainer.train(quick(method="erm-posthoc", seed=3, tau=1.5), tmp_path / "posthoc")
    # The same seed: the same initialisation, data order and loss, hence the same network as ERM's.
    assert posthoc["final"]["plain"]["confusion"] == erm["final"]["confusion"]
    assert posthoc["final"]["plain"]["error"] == erm["final"]["error"]
    assert [h["plain_test_error"] for h in posthoc["history"]] == [h["test_error"] for h in erm["history"]]
    assert "plain" not in erm["final"]

    # Its own figures: argmax of z - tau log(n_j / N), recomputed from the saved network.
    model = build_model("resnet8", digits.num_classes)
    model.load_state_dict(torch.load(tmp_path / "posthoc" / run_folder.CHECKPOINT, weights_only=False)["model"])
    model.eval()
    counts = digits.cls_num_list
    offset = torch.tensor([-1.5 * math.log(n / sum(counts)) for n in counts])
    wrong = total = 0
    with torch.no_grad():
        for x, y in eval_batches(*to_device(digits.test_images, digits.test_labels, "cpu"), 512):
            wrong += ((model(x) + offset).argmax(1) != y).sum().item()
            total += len(y)
    assert posthoc["final"]["error"] == pytest.approx(100 * wrong / total, abs=1e-9)
    assert posthoc["final"]["confusion"] != erm["final"]["confusion"]  # the adjustment moved predictions


def test_logit_adjusted_runs_take_tau():
    assert RunConfig(**quick(method="la", tau=0.5)).resolve().loss_params() == {"tau": 0.5}
    assert RunConfig(**quick(method="mm-drw", mm_variant="mask-zero")).resolve().loss_params()["variant"] == "mask-zero"
    with pytest.raises(ValueError, match="tau must be >= 0, got -1"):
        RunConfig(**quick(method="la", tau=-1.0))


# --- paired runs: one seed, one initialisation and data order --------------------------------


def test_runs_of_two_methods_with_one_seed_share_initialisation():
    linear = trainer.init_model(RunConfig(**quick(method="la", seed=5)).resolve(), 10, None).state_dict()
    cosine = trainer.init_model(RunConfig(**quick(method="mm-drw", seed=5)).resolve(), 10, None).state_dict()
    other = trainer.init_model(RunConfig(**quick(method="mm-drw", seed=6)).resolve(), 10, None).state_dict()
    # The backbone is drawn first and identically; then the head, of its own kind (unit-norm cosine, Kaiming linear).
    assert set(linear) - set(cosine) == {"fc.bias"} and set(cosine) <= set(linear)
    for name, value in cosine.items():
        assert torch.equal(value, linear[name]) != name.startswith("fc."), name
    assert not torch.equal(cosine["conv1.weight"], other["conv1.weight"])


@pytest.mark.slow
def test_runs_of_two_methods_with_one_seed_share_data_order_until_resampling(tmp_path, monkeypatch):
    """Each epoch's draws (order, crop offsets, flips) of each run's stream; DRS draws from the switch epoch
    on with replacement, so it departs."""
    drawn = {}

    class Recording(TrainStream):
        def draw(self):
            order, offsets, flips = super().draw()
            drawn.setdefault(self.name, []).append((order.clone(), offsets.clone(), flips.clone()))
            return order, offsets, flips

    monkeypatch.setattr(trainer, "TrainStream", Recording)
    for method in ("la", "mm-drw", "erm-drs"):
        Recording.name = method
        trainer.train(quick(method=method, seed=2, switch_epoch=1), tmp_path / method)
    assert len(drawn["la"]) == len(drawn["mm-drw"]) == len(drawn["erm-drs"]) == 2  # two epochs

    def same(a, b):
        return all(torch.equal(u, v) for u, v in zip(a, b))

    assert all(same(a, b) for a, b in zip(drawn["la"], drawn["mm-drw"]))
    assert same(drawn["la"][0], drawn["erm-drs"][0])
    assert not torch.equal(drawn["la"][1][0], drawn["erm-drs"][1][0])


# --- the beyond and ablation tables ---------------------------------------------------------


def test_beyond_table_holds_logit_adjustment_on_table1s_settings():
    cells = paper.cells("beyond", methods=["la", "la-drw", "erm-posthoc"])  # and the SAM rows: test_sam.py
    assert [(c.method, c.setting.name) for c in cells] == [
        (m, s) for m in ("la", "la-drw", "erm-posthoc") for s in paper.SETTINGS]
    for cell in cells:
        assert cell.params == {} and cell.paper_error is None and "Menon et al." in cell.notes[0]
        assert RunConfig.from_dict(cell.run_params(download=True, data_root="/nonexistent")).method == cell.method


def test_ablation_table_runs_both_mm_drw_rows_with_every_variant():
    cells = paper.cells("ablation")
    assert [(c.setting.name, c.method, c.variant) for c in cells] == [
        (s, m, v) for s in ("cifar10-exp-100", "cifar100-exp-100") for m in ("mm-drw", "mm-ldam-drw")
        for v in MM_VARIANTS]
    for cell in cells:
        table1 = paper.cells("table1", [cell.setting.name], [cell.method])[0]
        assert cell.params == {**table1.params, "mm_variant": cell.variant}
        assert cell.paper_error == table1.paper_error
    assert len({c.path("runs") for c in cells}) == len(cells)
    assert [c.run_name for c in cells[:4]] == ["mm-drw", "mm-drw-first-label", "mm-drw-mask-zero", "mm-drw-released"]
    assert cells[1].label == "MM-DRW (ours) [first-label only]"
    assert {c.setting.name for c in paper.cells("ablation", settings=["cifar10-step-10"])} == {"cifar10-step-10"}
    with pytest.raises(ValueError, match="ablation has no settings cifar10-exp-50"):
        paper.cells("ablation", settings=["cifar10-exp-50"])


@pytest.mark.parametrize("table, lines", [("beyond", 48), ("ablation", 16)])
def test_cli_lists_the_new_tables(table, lines, capsys):
    assert main(["list", table]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == lines
    if table == "ablation":
        assert out[3].split("\t")[2:] == ["mm-drw-released",
                                          "delta_neg=0.6 beta=1.5 s=10.0 mm_variant=released", "21.98"]
    else:
        assert out[0].split("\t") == ["beyond", "cifar10-exp-100", "la", "-", "-"]
        assert out[28].split("\t") == ["beyond", "cifar100-exp-100", "ce-drw-sam", "sam_rho=0.8", "55.40"]


@pytest.mark.parametrize("table", ["beyond", "ablation"])
def test_the_new_tables_render_through_the_reports(table, tmp_path):
    md = tables.render(cells.gather(table, tmp_path), table)["md"]
    assert md.startswith(f"## {tables.TITLES[table]}")
    # every row shown, missing runs as missing; MM rows name their variant, the equations' too
    rows = [f"{c.label} [equations]" if c.method.startswith("mm") and "[" not in c.label else c.label
            for c in paper.cells(table)]
    assert all(f"| {label} |" in md for label in rows)
    assert "missing" in md and ("Menon et al." in md if table == "beyond" else "which variant" in md)
