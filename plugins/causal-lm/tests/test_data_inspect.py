"""`loraplug data inspect` on the causal LM: samples token by token, learned tokens marked; no training.
(The core's side, on the toy regressor: tests/test_data_inspect.py.)"""

from __future__ import annotations

from pathlib import Path

from loraplug.testing import run_cli


def test_inspect_marks_exactly_the_response_tokens_and_trains_nothing(
    tmp_path: Path, lm_recipe, jsonl_file
) -> None:
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


def test_inspect_shows_the_prompt_learned_with_train_on_prompt_and_takes_overrides(
    lm_recipe, jsonl_file
) -> None:
    data = jsonl_file("inspect.jsonl", [{"prompt": "Forecast?", "response": "RAIN"}])
    result = run_cli(
        "data",
        "inspect",
        lm_recipe(data={"path": str(data), "val_fraction": 0.0}),
        "model.train_on_prompt=true",
    )
    assert result.exit_code == 0, result.output
    # with the prompt learned, only the very first token is context (nothing predicts it)
    assert "<|user|>⟦Forecast?</s><|assistant|>RAIN</s>⟧" in result.stdout


def test_inspect_shows_both_sides_of_a_preference_pair(lm_recipe, jsonl_file) -> None:
    rows = [
        {"prompt": "Forecast for Oslo?", "chosen": "RAIN · 9°C", "rejected": "no idea"},
        {"prompt": "Forecast for Rome?", "chosen": "SUN · 24°C", "rejected": "maybe sun"},
    ]
    data = jsonl_file("pairs.jsonl", rows)
    recipe = lm_recipe(
        data={"kind": "pairs", "path": str(data), "val_fraction": 0.0}, train={"objective": "dpo"}
    )
    result = run_cli("data", "inspect", recipe, "-n", "1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "1 training samples as the model sees them" in out
    # the pair counts as one sample, shown as its two rows: the chosen answer, then the rejected one
    assert "pairs.jsonl:1 (row 1 of 2)" in out and "pairs.jsonl:1 (row 2 of 2)" in out
    assert "<|user|>Forecast for Oslo?</s><|assistant|>⟦RAIN · 9°C</s>⟧" in out
    assert "<|user|>Forecast for Oslo?</s><|assistant|>⟦no idea</s>⟧" in out
    assert "pairs.jsonl:2" not in out
