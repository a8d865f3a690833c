"""The class-weighted loss: balanced weights from the training labels, and the loss torch's weighted
cross-entropy computes, summed so that gradient accumulation stays exact."""

from __future__ import annotations

import pytest
import torch

from loraplug import LoraplugError
from loraplug_text_classification.model import class_weights, collate, loss_sum
from loraplug_text_classification.options import SequenceClassifierOptions

LABELS = ["question", "billing", "outage"]
TRAIN = [
    {"id": str(i), "text": "t", "label": label}
    for i, label in enumerate(["question"] * 6 + ["billing"] * 3 + ["outage"])
]


def options(weights: object) -> SequenceClassifierOptions:
    return SequenceClassifierOptions(pretrained="tiny-llama-classifier", class_weights=weights)


def test_balanced_weights_give_every_class_the_same_total_and_average_one() -> None:
    weights = class_weights(options("balanced"), LABELS, TRAIN)
    assert weights == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / 3])
    counts = [6, 3, 1]
    assert [w * n for w, n in zip(weights, counts, strict=True)] == pytest.approx([10 / 3] * 3)
    assert class_weights(options("none"), LABELS, TRAIN) == [1.0, 1.0, 1.0]
    assert class_weights(options({"outage": 4.0}), LABELS, TRAIN) == [1.0, 1.0, 4.0]


def test_a_weight_for_an_unknown_label_is_refused_naming_it() -> None:
    with pytest.raises(LoraplugError, match="'outages', which is not a label"):
        class_weights(options({"outages": 2.0}), LABELS, TRAIN)


class Logits(torch.nn.Module):
    """A stand-in classifier whose logits are fixed per row (the loss is what is tested here)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        return type("Out", (), {"logits": self.logits})()


def test_the_weighted_loss_sum_is_torchs_weighted_cross_entropy_summed() -> None:
    weights = [0.5, 1.5, 3.0]
    samples = [
        {"id": str(i), "input_ids": [5, 6, 7][: i + 1], "label": label} for i, label in enumerate([0, 2, 1])
    ]
    batch = collate(samples, pad_id=0, weights=weights)
    logits = torch.tensor([[2.0, 0.1, -1.0], [0.3, 0.2, 0.1], [-0.5, 1.0, 0.0]])
    result = loss_sum(Logits(logits), batch)
    expected = torch.nn.functional.cross_entropy(
        logits, batch.inputs["labels"], weight=torch.tensor(weights), reduction="sum"
    )
    assert result.num_targets == 3
    assert float(result.loss_sum) == pytest.approx(float(expected), rel=1e-6)
    unweighted = loss_sum(Logits(logits), collate(samples, pad_id=0, weights=[1.0, 1.0, 1.0]))
    assert float(unweighted.loss_sum) != pytest.approx(float(expected))
