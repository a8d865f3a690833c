"""`loraplug data inspect`: the cleaning report and samples token by token, learned tokens marked; no training."""

from __future__ import annotations

from pathlib import Path

from loraplug.testing import run_cli


def test_inspect_marks_exactly_the_response_tokens_and_trains_nothing(tmp_path: Path, lm_recipe, jsonl_file) -> None:
    rows = [
        {"prompt": "Forecast for Oslo?", "response": "RAIN · 9°C"},
        {"prompt": "Forecast for Rome?", "response": "SUN · 24°C"},
        {"prompt": "Forecast for Rome?", "response": "SUN · 24°C"},  # a duplicate, removed and reported
    ]
    data = jsonl_file("inspect.jsonl", rows)
    recipe = lm_recipe(data={"path": str(data), "val_fraction": 0.0}, model={"max_length": 256})
    result = run_cli("data", "inspect", recipe, "-n", "5")
    assert result.exit_code == 0, result.output
    out = result.stdout
    # both samples share one packed row, and each is shown with its own learned span
    assert "2 samples in 1 rows" in out
    assert "<|user|>Forecast for Oslo?</s><|assistant|>⟦RAIN · 9°C</s>⟧" in out
    assert "<|user|>Forecast for Rome?</s><|assistant|>⟦SUN · 24°C</s>⟧" in out
    assert "exact_dedup" in out and "inspect.jsonl:3" in out  # the report, with the removed example
    assert not (tmp_path / "runs").exists()


def test_inspect_shows_the_prompt_learned_with_train_on_prompt_and_takes_overrides(lm_recipe, jsonl_file) -> None:
    data = jsonl_file("inspect.jsonl", [{"prompt": "Forecast?", "response": "RAIN"}])
    result = run_cli("data", "inspect", lm_recipe(data={"path": str(data), "val_fraction": 0.0}), "model.train_on_prompt=true")
    assert result.exit_code == 0, result.output
    # with the prompt learned, only the very first token is context (nothing predicts it)
    assert "<|user|>⟦Forecast?</s><|assistant|>RAIN</s>⟧" in result.stdout


def test_inspect_reports_a_bad_recipe_like_run_does(lm_recipe) -> None:
    result = run_cli("data", "inspect", lm_recipe(data={"clean": {"min_chars": -3}}))
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

    prepared = PreparedData(train=[{"id": "c:1", "ids": [5, 6, 7], "label": 1}, {"id": "c:2", "ids": [8, 9, 4], "label": 0}], collate=collate)
    assert list(token_views(prepared, 3)) == []
    # per-token labels still give a view
    per_token = PreparedData(train=[{"id": "t:1", "ids": [5, 6, 7]}], collate=lambda items: Batch(
        inputs={"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[-100, 6, 7]])}, num_targets=2, num_tokens=3, sample_ids=["t:1"]))  # fmt: skip
    assert [v.learned for v in token_views(per_token, 3)] == [[False, True, True]]
