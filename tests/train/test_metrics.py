"""What runs record while training: the final and the best epoch's error records, each epoch's entry."""

import pytest
import torch

from mmlib.train.metrics import Metrics


def confusion(correct: int) -> torch.Tensor:
    """A 2-class confusion of 10 test images a class, ``correct`` of the 20 right (half in each class, the odd one
    in class 0)."""
    right = [correct - correct // 2, correct // 2]
    return torch.tensor([[right[0], 10 - right[0]], [10 - right[1], right[1]]])


def test_the_best_epoch_is_the_first_with_the_lowest_error_and_the_final_the_last_evaluated():
    records = Metrics(2, {"many": [0], "medium": [], "few": [1]})
    correct = [(10, 16), (14, 18), (12, 18), (None, None)]  # of 20, per epoch, for runs 0 and 1; epoch 4: none
    for epoch, (a, b) in enumerate(correct, start=1):
        evaluated = torch.stack([confusion(a), confusion(b)]) if a is not None else None
        entries = records.add_epoch(0.1, [1.0, 1.0], [50.0, 50.0], 1.0, evaluated)
        assert [e["epoch"] for e in entries] == [epoch, epoch]
        assert ("test_error" in entries[0]) == (a is not None)
    # errors: run 0 50, 30, 40 %; run 1 20, 10, 10 % (100 * (1 - correct / 20)): run 1's best is the first of two
    assert [records.best[0]["epoch"], records.best[0]["error"]] == [2, pytest.approx(30.0)]
    assert [records.final[0]["epoch"], records.final[0]["error"]] == [3, pytest.approx(40.0)]
    assert [records.best[1]["epoch"], records.best[1]["error"]] == [2, pytest.approx(10.0)]
    assert [records.final[1]["epoch"], records.final[1]["error"]] == [3, pytest.approx(10.0)]
    assert records.epoch == 4 and len(records.history[0]) == 4
