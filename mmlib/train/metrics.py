"""What K runs measure while they train, and the files each leaves when it finishes.

Per epoch, each run's history entry (lr, train loss and error, seconds, test error when evaluated); the
evaluations of its final epoch and of its best one (top-1, per-class and many/medium/few-shot
errors, confusion matrix); the step paths that trained it (mmlib.train.step: graphs or eager, and why); at
the end metrics.json and per_class.csv (mmlib.train.run_folder). The trainer (mmlib.train.trainer) feeds it each
epoch's numbers and stores ``of_run(k)`` in run k's checkpoint.
"""

import datetime
from pathlib import Path

import torch

from mmlib import files
from mmlib.train import run_folder

BEST_NOTE = "best epoch chosen on the test set, as the released code reports it: an optimistic figure"
PLAIN_NOTE = ("the same epoch's errors of the plain logits z (ERM as trained); the enclosing evaluation's are of "
              "z - tau log(prior)")


def evaluation(epoch: int, confusion: torch.Tensor, groups: dict[str, list[int]]) -> dict:
    """Top-1 error (%), per-class and many/medium/few-shot errors from one confusion matrix."""
    totals, correct = confusion.sum(1), confusion.diagonal()
    per_class = (100.0 * (1 - correct / totals.clamp(min=1))).tolist()
    group_error = {}
    for name, classes in groups.items():
        n = totals[classes].sum().item()
        group_error[name] = 100.0 * (1 - correct[classes].sum().item() / n) if n else None
    return {
        "epoch": epoch,
        "error": 100.0 * (1 - correct.sum().item() / totals.sum().item()),
        "per_class_error": per_class,
        "group_error": group_error,
        "confusion": confusion.tolist(),
    }


class Metrics:
    """The K runs' metrics so far: completed epochs, each run's history, its final and best evaluations."""

    def __init__(self, runs: int, groups: dict[str, list[int]], posthoc: list[bool] | None = None):
        self.groups = groups
        self.posthoc = posthoc or [False] * runs  # run k evaluates adjusted logits, its plain ones kept beside
        self.epoch = 0
        self.history: list[list[dict]] = [[] for _ in range(runs)]
        self.final: list[dict | None] = [None] * runs
        self.best: list[dict | None] = [None] * runs
        self.steps: list[list[dict]] = [[] for _ in range(runs)]  # every distinct step path, in the order taken

    def load(self, saved: list[dict]) -> None:
        """Continue from the runs' checkpoints, which hold what ``of_run`` gave."""
        self.epoch = saved[0]["epoch"]
        self.history = [s["history"] for s in saved]
        self.final = [s["final"] for s in saved]
        self.best = [s["best"] for s in saved]
        self.steps = [s.get("step", []) for s in saved]  # older checkpoints did not record it

    def of_run(self, k: int) -> dict:
        """Run k's metrics, for its checkpoint."""
        return {"epoch": self.epoch, "history": self.history[k], "final": self.final[k], "best": self.best[k],
                "step": self.steps[k]}

    def note_step(self, paths: list[dict]) -> None:
        """The step paths ({"path", "reason"}) that trained the runs so far (one list: the K runs share a step)."""
        for steps in self.steps:
            steps.extend(dict(p) for p in paths if p not in steps)

    def add_epoch(self, lr: float, losses: list[float], train_errors: list[float], seconds: float,
                  confusions: torch.Tensor | None = None, plain: torch.Tensor | None = None) -> list[dict]:
        """Each run's entry of the next epoch; with the test set's (K, C, C) confusions, its final and best
        evaluations too (a post-hoc run's hold the same epoch's plain evaluation under "plain"). Returns the entries."""
        self.epoch += 1
        entries = []
        for k, history in enumerate(self.history):
            entry = {"epoch": self.epoch, "lr": lr, "train_loss": losses[k], "train_error": train_errors[k],
                     "seconds": seconds}
            if confusions is not None:
                record = evaluation(self.epoch, confusions[k], self.groups)
                entry.update(test_error=record["error"], group_error=record["group_error"])
                if self.posthoc[k]:
                    record["plain"] = {**evaluation(self.epoch, plain[k], self.groups), "note": PLAIN_NOTE}
                    entry["plain_test_error"] = record["plain"]["error"]
                self.final[k] = record
                if self.best[k] is None or record["error"] < self.best[k]["error"]:
                    self.best[k] = record
            history.append(entry)
            entries.append(entry)
        return entries

    def write(self, run_dirs: list[Path], dataset, skip: set[int] = frozenset()) -> None:
        """Each finished run's metrics.json and per_class.csv, then its FINISHED marker (none for the runs in skip)."""
        group_of = {c: g for g, classes in dataset.groups.items() for c in classes}
        for k, run_dir in enumerate(run_dirs):
            if k in skip:
                continue
            final, best, history = self.final[k], self.best[k], self.history[k]
            files.write_json(run_dir / run_folder.METRICS, {
                "final": final,
                "best": {**best, "note": BEST_NOTE},
                "history": history,
                "seconds": sum(h["seconds"] for h in history),
                "fused_runs": len(run_dirs),
                "step": self.steps[k],
                "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            })
            lines = ["class,name,train_count,group,final_error,best_error"]
            for c, name in enumerate(dataset.classes):
                lines.append(f"{c},{name},{dataset.cls_num_list[c]},{group_of[c]},"
                             f"{final['per_class_error'][c]:.4f},{best['per_class_error'][c]:.4f}")
            files.write_text(run_dir / run_folder.PER_CLASS, "\n".join(lines) + "\n")
            files.write_text(run_dir / run_folder.FINISHED, f"finished after {final['epoch']} epochs\n")


class TensorBoard:
    """Each run's epoch entries as TensorBoard scalars in its run directory (none for runs without tensorboard)."""

    def __init__(self, configs, run_dirs: list[Path]):
        self.writers = [None] * len(configs)
        if any(c.tensorboard for c in configs):
            from torch.utils.tensorboard import SummaryWriter  # imported only when asked for: it is slow

            self.writers = [SummaryWriter(str(d / "tensorboard")) if c.tensorboard else None
                            for c, d in zip(configs, run_dirs)]

    def add(self, entries: list[dict]) -> None:
        for writer, entry in zip(self.writers, entries):
            if writer is not None:
                for name, value in entry.items():
                    if isinstance(value, float):
                        writer.add_scalar(name, value, entry["epoch"])

    def close(self) -> None:
        for writer in self.writers:
            if writer is not None:
                writer.close()
