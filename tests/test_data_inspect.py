"""`loraplug data inspect`: the cleaning report, no training, and token views only of batches with
per-token labels (the causal LM's token views: plugins/causal-lm/tests/test_data_inspect.py)."""

from __future__ import annotations

from pathlib import Path

from loraplug.testing import run_cli


def test_inspect_of_a_model_without_tokens_shows_the_cleaning_report_and_trains_nothing(
    tmp_path: Path, toy_recipe_file, jsonl_file, toy_rows_of
) -> None:
    rows = toy_rows_of(4)
    data = jsonl_file("inspect.jsonl", [*rows[:2], rows[1], *rows[2:]])  # a duplicate, removed and reported
    result = run_cli(
        "data", "inspect", toy_recipe_file(data={"path": str(data), "val_path": None}), "-n", "5"
    )
    assert result.exit_code == 0, result.output
    assert "exact_dedup" in result.stdout and "inspect.jsonl:3" in result.stdout
    assert "no token view for model kind 'toy-regressor'" in result.stdout
    assert not (tmp_path / "runs").exists()


def test_inspect_reports_a_bad_recipe_like_run_does(toy_recipe_file) -> None:
    result = run_cli("data", "inspect", toy_recipe_file(data={"clean": {"min_chars": -3}}))
    assert result.exit_code == 2
    assert "`data.clean.min_chars`" in result.stderr


def test_a_batch_with_one_label_per_row_gets_no_token_view_and_no_crash() -> None:
    # A classifier's batch: `labels` holds one class per row, not one label per token.
    import torch

    from loraplug import Batch, PreparedData
    from loraplug.data.inspect import token_views

    def collate(items: list[dict]) -> Batch:
        return Batch(
            inputs={"input_ids": torch.tensor([i["ids"] for i in items]), "labels": torch.tensor([i["label"] for i in items])},
            num_targets=len(items), num_tokens=sum(len(i["ids"]) for i in items), sample_ids=[i["id"] for i in items],
        )  # fmt: skip

    prepared = PreparedData(
        train=[{"id": "c:1", "ids": [5, 6, 7], "label": 1}, {"id": "c:2", "ids": [8, 9, 4], "label": 0}],
        collate=collate,
    )
    assert list(token_views(prepared, 3)) == []
    # per-token labels still give a view
    per_token = PreparedData(train=[{"id": "t:1", "ids": [5, 6, 7]}], collate=lambda items: Batch(
        inputs={"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[-100, 6, 7]])}, num_targets=2, num_tokens=3, sample_ids=["t:1"]))  # fmt: skip
    assert [v.learned for v in token_views(per_token, 3)] == [[False, True, True]]
