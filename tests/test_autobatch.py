"""batch_size = "auto": the largest micro-batch that fits, the effective batch kept exactly."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from loraplug.testing import run_cli
from loraplug.training.autobatch import divisors, search


def test_divisors_are_the_micro_batches_that_keep_the_effective_batch() -> None:
    assert divisors(32, 100) == [1, 2, 4, 8, 16, 32]
    assert divisors(24, 10) == [1, 2, 3, 4, 6, 8]


def test_search_jumps_to_the_largest_predicted_fit_and_measures_it() -> None:
    measured: list[int] = []

    def measure(size: int) -> int:
        measured.append(size)
        return 100 + 10 * size

    chosen, _, next_peak, predicted = search(divisors(32, 100), measure, budget=185)
    assert chosen == 8  # 180 ≤ 185; 16 would need 260
    assert measured == [1, 2, 8]  # 4 is skipped, 16 and 32 never run
    assert (next_peak, predicted) == (260, True)


def test_search_steps_down_when_memory_grows_faster_than_predicted() -> None:
    measured: list[int] = []

    def measure(size: int) -> int | None:
        measured.append(size)
        return None if size >= 16 else 100 + size * size  # superlinear, out of memory from 16

    chosen, probes, next_peak, predicted = search(divisors(32, 100), measure, budget=200)
    assert chosen == 8
    assert measured == [1, 2, 32, 16, 8]
    assert (next_peak, predicted) == (None, False)  # 16 was measured and ran out of memory


def test_search_reports_when_nothing_fits() -> None:
    chosen, probes, _, _ = search([1, 2, 4], lambda size: 1000 * size, budget=10)
    assert chosen is None and [p.size for p in probes] == [1]


def _auto_run(tmp_path: Path, toy_recipe_file, name: str, train: dict) -> tuple[dict, dict, str]:
    recipe = toy_recipe_file(
        run={"name": name},
        adapter={"dropout": 0.1},  # the search must not disturb the random numbers training uses
        train={"max_steps": 2, **train},
        eval={"sample_prompts": []},
        export=[],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / name
    return (
        load_file(str(run_dir / "adapter" / "adapter.safetensors")),
        json.loads((run_dir / "run.json").read_text()),
        result.stdout,
    )


def test_auto_chooses_logs_and_trains_exactly_like_the_chosen_numbers(
    tmp_path: Path, toy_recipe_file
) -> None:
    auto, status, out = _auto_run(
        tmp_path, toy_recipe_file, "auto", {"batch_size": "auto", "effective_batch_size": 4}
    )
    chosen = status["auto_batch"]
    assert chosen["batch_size"] * chosen["grad_accum_steps"] == 4
    assert (
        chosen["batch_size"] == 4
    )  # the toy model fits a whole effective batch in 70 % of any machine's RAM
    assert "batch_size auto: 4 × 1 accumulation = 4 per step" in out and "budget" in out
    fixed, _, _ = _auto_run(tmp_path, toy_recipe_file, "fixed", {"batch_size": 4, "grad_accum_steps": 1})
    for key in auto:
        torch.testing.assert_close(auto[key], fixed[key], rtol=0, atol=0, msg=key)


def test_auto_says_when_not_even_one_sample_fits(toy_recipe_file) -> None:
    recipe = toy_recipe_file(train={"batch_size": "auto", "memory_fraction": 1e-9}, export=[])
    result = run_cli("run", recipe)
    assert result.exit_code == 2
    assert 'batch_size = "auto": even a micro-batch of 1 needs' in result.stderr
    assert "train.memory_fraction" in result.stderr


def test_effective_batch_size_needs_auto(toy_recipe_file) -> None:
    result = run_cli("recipe", "check", toy_recipe_file(train={"batch_size": 4, "effective_batch_size": 16}))
    assert result.exit_code == 2
    assert 'effective_batch_size is for batch_size = "auto"' in result.stderr
