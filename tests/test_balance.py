"""data.balance_by / data.weight_by: rare classes are drawn as often as common ones, deterministically,
and several processes together draw exactly what one process draws."""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path

from loraplug.bundles import Batch, PreparedData
from loraplug.data.balance import record_weights
from loraplug.data.options import DataCoreOptions
from loraplug.testing import run_cli
from loraplug.training.batches import MicroBatches

LABELS = ["common"] * 90 + ["rare"] * 10


def _ids(samples: list[int]) -> Batch:
    return Batch(
        inputs={}, num_targets=len(samples), num_tokens=len(samples), sample_ids=[str(s) for s in samples]
    )


def _draws(
    *, batch_size: int, rank: int = 0, world: int = 1, seed: int = 5, batches: int = 200
) -> list[list[int]]:
    records = [{"id": str(i), "label": label} for i, label in enumerate(LABELS)]
    weighed = record_weights(records, DataCoreOptions(balance_by="label"))
    assert weighed is not None
    prepared = PreparedData(train=list(range(len(LABELS))), collate=_ids, sample_weights=weighed[0])
    stream = MicroBatches(
        prepared, batch_size=batch_size, seed=seed, rank=rank, world=world, num_workers=0
    ).iterate()
    return [[int(s) for s in batch.sample_ids] for _, batch in islice(stream, batches)]


def test_each_class_is_drawn_about_equally_often() -> None:
    drawn = Counter(LABELS[i] for batch in _draws(batch_size=10) for i in batch)
    share = drawn["rare"] / sum(drawn.values())
    assert 0.45 < share < 0.55  # 10 % of the records, half of the draws


def test_draws_depend_only_on_the_seed() -> None:
    assert _draws(batch_size=4, batches=30) == _draws(batch_size=4, batches=30)
    assert _draws(batch_size=4, batches=30) != _draws(batch_size=4, batches=30, seed=6)


def test_two_processes_draw_what_one_process_draws() -> None:
    single = _draws(batch_size=8, batches=40)
    rank0 = _draws(batch_size=4, rank=0, world=2, batches=40)
    rank1 = _draws(batch_size=4, rank=1, world=2, batches=40)
    assert [a + b for a, b in zip(rank0, rank1, strict=True)] == single


def test_weight_by_uses_the_records_numbers() -> None:
    records = [{"id": "a", "w": 3}, {"id": "b", "w": 0}, {"id": "c", "w": 1.5}]
    weighed = record_weights(records, DataCoreOptions(weight_by="w"))
    assert weighed is not None and weighed[0] == [3.0, 0.0, 1.5]


def _labelled(jsonl_file, toy_rows_of, rows: int = 20) -> Path:
    return jsonl_file(
        "labelled.jsonl",
        [{**r, "label": "rare" if i % 5 == 0 else "common"} for i, r in enumerate(toy_rows_of(rows))],
    )


def test_a_balanced_run_reports_its_classes(tmp_path: Path, toy_recipe_file, jsonl_file, toy_rows_of) -> None:
    data = _labelled(jsonl_file, toy_rows_of)
    recipe = toy_recipe_file(
        data={"path": str(data), "val_path": None, "balance_by": "label"},
        train={"max_steps": 1},
        eval={"sample_prompts": []},
        export=[],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "runs" / "tiny" / "data_report.json").read_text())
    assert report["sampling"]["classes"] == {"common": 16, "rare": 4}
    assert report["sampling"]["each class drawn"].startswith("50.0%")


def test_a_sample_without_the_label_is_an_error_naming_it(toy_recipe_file, jsonl_file, toy_rows_of) -> None:
    rows = [{**r, "label": "x"} for r in toy_rows_of(6)]
    del rows[3]["label"]
    data = jsonl_file("labelled.jsonl", rows)
    result = run_cli(
        "run", toy_recipe_file(data={"path": str(data), "val_path": None, "balance_by": "label"}, export=[])
    )
    assert result.exit_code == 2
    assert "Sample labelled.jsonl:4 has no field 'label', which data.balance_by names" in result.stderr


def test_balance_by_and_weight_by_together_are_refused(toy_recipe_file) -> None:
    result = run_cli("recipe", "check", toy_recipe_file(data={"balance_by": "label", "weight_by": "w"}))
    assert result.exit_code == 2
    assert "set either balance_by or weight_by, not both" in result.stderr
