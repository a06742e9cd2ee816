"""Run directories as the trainer leaves them, with chosen numbers, without training (for tests and benchmarks).

A run's test set holds ``test_per_class`` images of each class; ``correct[c]`` of class c are
classified right and the others predicted as the next class, so every error is known in advance:
class c's error is 100 (1 - correct[c] / test_per_class), the top-1 error 100 (1 - sum(correct) /
(classes * test_per_class)).
"""

import datetime
from pathlib import Path

import torch

from mmlib import files, paper
from mmlib.config import RunConfig
from mmlib.data import imbalance, sources
from mmlib.train import metrics, run_folder, schedule


def confusion(correct: list[int], test_per_class: int) -> torch.Tensor:
    """Rows true, columns predicted: correct[c] on the diagonal, the rest of row c in column c + 1."""
    classes = len(correct)
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    for c, right in enumerate(correct):
        matrix[c, c] = right
        matrix[c, (c + 1) % classes] += test_per_class - right
    return matrix


def write_run(run_dir, params: dict, test_per_class: int, final_correct: list[int], best_correct: list[int] | None = None,
              finished: bool = True, fused_runs: int = 1) -> None:
    """A run directory for the RunConfig ``params`` (its dataset's class counts, its epochs), final and best
    epochs from the given correct counts, a history of every epoch; FINISHED unless ``finished`` is False."""
    run_dir = Path(run_dir)
    # CIFAR configs need a data root to validate; no images are read
    config = RunConfig.from_dict({"data_root": str(run_dir), "download": True, **params}).resolve()
    counts = imbalance.class_counts(*sources.dataset_size(config.dataset), config.imb_type, config.ratio)
    classes = [f"class{c}" for c in range(len(counts))]
    groups = imbalance.groups(counts)
    final = metrics.evaluation(config.epochs, confusion(final_correct, test_per_class), groups)
    best = metrics.evaluation(max(1, config.epochs - 1), confusion(best_correct or final_correct, test_per_class),
                                  groups)
    history = [{"epoch": e + 1, "lr": schedule.learning_rate(config.resolve(), e), "train_loss": 2.0 / (e + 1),
                "train_error": 50.0 / (e + 1), "seconds": 1.5, "test_error": final["error"] + 10.0 / (e + 1),
                "group_error": final["group_error"]} for e in range(config.epochs)]
    files.write_json(run_dir / run_folder.CONFIG, {
        "mmlib_version": "fixture", "torch_version": torch.__version__, "cuda_version": None, "python_version": "3",
        "device": "cpu", "device_name": "fixture", "git_commit": None, "config": config.to_dict()})
    files.write_json(run_dir / run_folder.COUNTS, {"classes": classes, "cls_num_list": counts, "groups": groups,
                                                 "description": f"{config.dataset}: fixture"})
    if not finished:
        return
    files.write_json(run_dir / run_folder.METRICS, {
        "final": final, "best": {**best, "note": metrics.BEST_NOTE}, "history": history,
        "seconds": 1.5 * config.epochs, "fused_runs": fused_runs,
        "finished_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).isoformat()})
    group_of = {c: g for g, members in groups.items() for c in members}
    lines = ["class,name,train_count,group,final_error,best_error"] + [
        f"{c},{classes[c]},{counts[c]},{group_of[c]},{final['per_class_error'][c]:.4f},{best['per_class_error'][c]:.4f}"
        for c in range(len(counts))]
    files.write_text(run_dir / run_folder.PER_CLASS, "\n".join(lines) + "\n")
    files.write_text(run_dir / run_folder.FINISHED, f"finished after {config.epochs} epochs\n")


def cell_of(table: str, setting: str, method: str, variant: str = "equations") -> paper.Cell:
    [cell] = [c for c in paper.cells(table, [setting], [method], (variant,)) if c.variant == variant]
    return cell


def protocol_config(run_dir) -> dict:
    """The resolved configuration of the run its folder <table>/<setting>/<run name>/seed<k> holds: its cell's protocol."""
    run_dir = Path(run_dir)
    table, setting, run_name = run_dir.parts[-4:-1]
    return paper.protocol(paper.cell_at(table, setting, run_name), int(run_dir.name.removeprefix("seed")))
