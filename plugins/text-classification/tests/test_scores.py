"""The classification scores against values worked out by hand (scikit-learn's conventions, zero_division=0)."""

from __future__ import annotations

import pytest

from loraplug_text_classification.scores import accuracy, confusion, macro_f1, per_class

LABELS = ["a", "b", "c"]


def test_scores_of_a_small_confusion_match_the_hand_worked_values() -> None:
    truth = [0, 0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 2, 1, 0, 0]
    matrix = confusion(truth, predicted, 3)
    assert matrix == [[2, 1, 1], [1, 1, 0], [1, 0, 0]]
    a, b, c = per_class(matrix, LABELS)
    # a: precision 2/4, recall 2/4; b: precision 1/2, recall 1/2; c: never right.
    assert (a.precision, a.recall, a.f1, a.support) == (0.5, 0.5, 0.5, 4)
    assert (b.precision, b.recall, b.f1, b.support) == (0.5, 0.5, 0.5, 2)
    assert (c.precision, c.recall, c.f1, c.support) == (0.0, 0.0, 0.0, 1)
    assert accuracy(matrix) == pytest.approx(3 / 7)
    assert macro_f1([a, b, c]) == pytest.approx(1 / 3)


def test_a_class_never_predicted_or_absent_scores_zero_not_nan() -> None:
    matrix = confusion([0, 0, 1], [0, 0, 0], 3)
    a, b, c = per_class(matrix, LABELS)
    assert a.precision == pytest.approx(2 / 3) and a.recall == 1.0 and a.f1 == pytest.approx(0.8)
    assert (b.precision, b.recall, b.f1) == (0.0, 0.0, 0.0)
    assert (c.precision, c.recall, c.f1, c.support) == (0.0, 0.0, 0.0, 0)
    # The majority answer is accurate yet poor on macro-F1: why the tiny recipe watches macro-F1.
    assert accuracy(matrix) == pytest.approx(2 / 3)
    assert macro_f1([a, b, c]) == pytest.approx(0.8 / 3)
