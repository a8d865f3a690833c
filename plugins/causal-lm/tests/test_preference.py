"""Preference tuning through the CLI: the pairs data kind, its counted skips, exact accumulation for dpo
and orpo, the cached reference, the reward metrics of recipes/tiny_dpo.toml, and the errors a recipe
that mixes objective and data gets. (The losses against TRL's: test_preference_trl.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from loraplug.testing import run_cli
from loraplug_causal_lm.testing import adapter_for_exactness

RECIPES = Path(__file__).parents[3] / "recipes"


def pair_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Pairs of different lengths, half in the plain form and half in the chat form."""
    import random

    rng = random.Random(seed)
    words = ["rain", "sun", "wind", "snow", "fog", "cloud", "storm"]
    rows: list[dict[str, Any]] = []
    for i in range(count):
        prompt = f"q{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        chosen = " ".join(rng.choice(words).upper() for _ in range(rng.randint(1, 12)))
        rejected = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) + " maybe"
        if i % 2:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        else:
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": prompt},
                    ],
                    "chosen": {"role": "assistant", "content": chosen},
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
    return rows


def preference_recipe(lm_recipe: Any, data: Path, objective: str, **train: Any) -> Path:
    return lm_recipe(
        data={"kind": "pairs", "path": str(data), "val_fraction": 0.0},
        train={"objective": objective, "max_steps": 1, "batch_size": 2, **train},
        eval={"sample_prompts": []},
        export=[],
    )


def test_pairs_in_both_forms_train_and_unusable_pairs_are_counted_skips(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any
) -> None:
    rows = pair_rows(6)
    rows.append({"prompt": "same?", "chosen": "yes", "rejected": "yes"})  # teaches nothing
    rows.append({"prompt": "long " * 40, "chosen": "A", "rejected": "B"})  # the prompt fills max_length (64)
    data = jsonl_file("pairs.jsonl", rows)
    recipe = preference_recipe(lm_recipe, data, "dpo", max_steps=2)
    result = run_cli("run", recipe, "data.clean.exact_dedup=true")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    summary = json.loads((run / "run.json").read_text())["data"]
    assert summary["train pairs"] == 8
    assert summary["skipped pairs (chosen equals rejected)"] == 1
    assert summary["skipped pairs (prompt truncated away)"] == 1
    report = json.loads((run / "data_report.json").read_text())["splits"]["train"]
    counted = next(f for f in report["filters"] if f["name"] == "preference pairs")
    assert counted["removed"] == 2
    assert {e["reason"] for e in counted["examples"]} == {"chosen equals rejected", "prompt truncated away"}
    # The reward figures are logged with the training loss (summed over pairs, the mean per pair logged).
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert train and 0.0 <= train[-1]["reward_accuracy"] <= 1.0
    assert {"reward_margin", "chosen_logps", "rejected_logps"} <= train[-1].keys()


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_accumulation_equals_one_larger_batch(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any, objective: str
) -> None:
    """Pairs of very different lengths: 2 micro-batches of 2 pairs give the update of one batch of 4."""
    data = jsonl_file("pairs.jsonl", pair_rows(8, seed=2))

    def adapter(name: str, batch_size: int, accumulation: int) -> dict[str, torch.Tensor]:
        def recipe(**changes: Any) -> Path:
            changes["data"] = {**changes["data"], "kind": "pairs"}
            changes["train"] = {**changes["train"], "objective": objective}
            return lm_recipe(**changes)

        weights, _ = adapter_for_exactness(
            tmp_path,
            recipe,
            data,
            name,
            batch_size=batch_size,
            accumulation=accumulation,
            max_steps=2,
            packing=False,
        )
        return weights

    big = adapter("batch4", 4, 1)
    accumulated = adapter("micro2x2", 2, 2)
    assert max(float(big[k].abs().max()) for k in big if "lora_B" in k) > 1e-3  # B starts at zero: it moved
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=1e-4, atol=1e-6, msg=key)


def test_cached_reference_trains_the_same_weights_as_the_adapter_switched_off(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any
) -> None:
    data = jsonl_file("pairs.jsonl", pair_rows(8, seed=4))
    trained = {}
    for precompute in (False, True):
        name = f"precompute-{str(precompute).lower()}"
        recipe = lm_recipe(
            run={"name": name},
            data={"kind": "pairs", "path": str(data), "val_fraction": 0.0},
            adapter={"dropout": 0.0},
            train={"objective": "dpo", "max_steps": 2, "batch_size": 4},
            eval={"sample_prompts": []},
            export=[],
        )
        result = run_cli("run", recipe, f"objective.precompute_reference={str(precompute).lower()}")
        assert result.exit_code == 0, result.output
        assert ("reference log-probabilities of 8 pairs computed" in result.output) == precompute
        from safetensors.torch import load_file

        trained[precompute] = load_file(str(tmp_path / "runs" / name / "adapter" / "adapter.safetensors"))
    for key, value in trained[False].items():
        torch.testing.assert_close(trained[True][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_sft_on_pairs_and_dpo_on_chat_samples_are_refused(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any
) -> None:
    pairs = jsonl_file("pairs.jsonl", pair_rows(4))
    result = run_cli("run", preference_recipe(lm_recipe, pairs, "sft"))
    assert result.exit_code != 0
    assert "train.objective is sft" in result.output and "Traceback" not in result.output

    chat = jsonl_file("chat.jsonl", [{"prompt": "q", "response": "a"}] * 4)
    recipe = lm_recipe(
        data={"path": str(chat), "val_fraction": 0.0}, train={"objective": "dpo", "max_steps": 1}
    )
    result = run_cli("recipe", "check", recipe)  # refused before anything loads
    assert result.exit_code != 0
    assert "train.objective" in result.output and "preference records" in result.output
    assert "data kinds that produce them: pairs" in result.output and "Traceback" not in result.output


def test_recipe_check_names_an_unknown_objective_and_a_wrong_option(lm_recipe: Any) -> None:
    result = run_cli("recipe", "check", lm_recipe(train={"objective": "dpoo"}))
    assert result.exit_code != 0
    assert "train.objective" in result.output and "dpo" in result.output
    result = run_cli("recipe", "check", lm_recipe(train={"objective": "dpo"}, objective={"betta": 0.1}))
    assert result.exit_code != 0
    assert "objective.betta" in result.output and "beta" in result.output


@pytest.mark.slow
def test_tiny_dpo_recipe_raises_reward_accuracy(tmp_path: Path) -> None:
    """recipes/tiny_dpo.toml, shortened: reward accuracy on the held-out pairs rises clearly from the start
    (where the policy is the reference, every margin is 0 and the accuracy 0)."""
    result = run_cli(
        "run",
        RECIPES / "tiny_dpo.toml",
        f"run.output_dir={tmp_path / 'runs'}",
        "train.max_steps=8",
        "data.val_fraction=0.05",
        "eval.every_n_steps=8",
        "eval.sample_prompts=[]",
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "runs" / "tiny-dpo" / "metrics.jsonl").read_text().splitlines()
    evaluations = [r for r in map(json.loads, lines) if "reward_accuracy" in r]
    first, last = evaluations[0], evaluations[-1]
    assert first["step"] == 0 and first["reward_accuracy"] == 0.0
    assert last["reward_accuracy"] >= 0.8 and last["reward_margin"] > first["reward_margin"]
    assert last["chosen_logps"] - last["rejected_logps"] > first["chosen_logps"] - first["rejected_logps"]


def test_dpo_from_an_earlier_adapter_uses_it_as_the_reference(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any
) -> None:
    """adapter.init_from: the SFT adapter is where training starts and what DPO compares with — at step 0
    every reward margin is 0 (against the base with the adapter off it would not be)."""
    sft = lm_recipe(
        run={"name": "sft"},
        train={"max_steps": 2, "lr": 1e-2},
        eval={"sample_prompts": []},
        export=[{"kind": "peft"}],
    )
    assert run_cli("run", sft).exit_code == 0
    earlier = tmp_path / "runs" / "sft" / "exports" / "peft"
    data = jsonl_file("pairs.jsonl", pair_rows(8, seed=6))
    recipe = lm_recipe(
        run={"name": "dpo"},
        data={"kind": "pairs", "path": str(data), "val_fraction": 0.25},
        adapter={"init_from": str(earlier)},
        train={"objective": "dpo", "max_steps": 1, "batch_size": 2},
        eval={"metrics": ["reward_margin", "chosen_logps"], "sample_prompts": []},
        export=[],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output
    assert "reference log-probabilities of 8 pairs computed" in result.output
    evaluations = json.loads((tmp_path / "runs" / "dpo" / "run.json").read_text())["evaluations"]
    assert evaluations[0]["step"] == 0 and evaluations[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)

    # The same with the base as reference: the SFT adapter already moved the log-probabilities.
    recipe_base = lm_recipe(
        run={"name": "dpo-base"},
        data={"kind": "pairs", "path": str(data), "val_fraction": 0.25},
        train={"objective": "dpo", "max_steps": 1, "batch_size": 2},
        eval={"metrics": ["chosen_logps"], "sample_prompts": []},
        export=[],
    )
    assert run_cli("run", recipe_base).exit_code == 0
    base_status = json.loads((tmp_path / "runs" / "dpo-base" / "run.json").read_text())["evaluations"]
    assert base_status[0]["chosen_logps"] != pytest.approx(evaluations[0]["chosen_logps"], rel=1e-4)

    mismatched = lm_recipe(
        run={"name": "dpo-r8"},
        data={"kind": "pairs", "path": str(data)},
        adapter={"init_from": str(earlier), "r": 8},
        train={"objective": "dpo", "max_steps": 1},
        export=[],
    )
    result = run_cli("run", mismatched)
    assert result.exit_code != 0
    assert "r = 4" in result.output and "adapter.r" in result.output and "Traceback" not in result.output


def test_the_objective_example_in_docs_plugins_md_trains_simpo_through_its_own_train_step(
    tmp_path: Path, lm_recipe: Any, jsonl_file: Any
) -> None:
    """A third party's objective (SimPO, docs/plugins.md) installed as a distribution: the loop calls its
    loraplug_train_step, not the causal-lm plugin's, on the pairs the causal-lm plugin prepared."""
    import re

    from loraplug.testing import plugin_dist, run_with_site

    text = (Path(__file__).parents[3] / "docs" / "plugins.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example: objective plugin -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/plugins.md lost its objective example"
    site = plugin_dist(
        tmp_path / "site", distribution="loraplug-simpo", module="loraplug_simpo", source=match.group(1)
    )
    data = jsonl_file("pairs.jsonl", pair_rows(6))
    recipe = lm_recipe(
        data={"kind": "pairs", "path": str(data), "val_fraction": 0.0},
        train={"objective": "simpo", "max_steps": 2, "batch_size": 2},
        objective={"beta": 2.0, "gamma": 0.5},
        eval={"sample_prompts": []},
        export=[],
    )
    proc = run_with_site(site, "run", recipe, cwd=tmp_path, env={"LORAPLUG_STRICT_PLUGINS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loraplug_train_step -> loraplug-simpo:loraplug_simpo" in proc.stderr
    assert "loraplug_train_step -> loraplug-causal-lm" not in proc.stderr
    first = json.loads((tmp_path / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] > 0


def test_a_pair_learns_only_its_own_turns_even_after_assistant_turns_in_the_prompt() -> None:
    """The chat form's earlier assistant turns are prompt: each side's targets are its own answer (and its
    end-of-turn), whatever model.train_on_prompt says."""
    import os

    from transformers import AutoTokenizer

    from loraplug_causal_lm.encode import IGNORE, Encoder
    from loraplug_causal_lm.pairs import encode_pair, parse_pair
    from loraplug_causal_lm.presets import preset_dir

    tokenizer = AutoTokenizer.from_pretrained(preset_dir("tiny-llama", Path(os.environ["LORAPLUG_CACHE"])))
    line = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "EARLIER"},
            {"role": "user", "content": "and now?"},
        ],
        "chosen": "GOOD",
        "rejected": [{"role": "assistant", "content": "BAD"}],
    }
    for train_on_prompt in (False, True):
        encoder = Encoder(tokenizer, max_length=256, train_on_prompt=train_on_prompt)
        pair = encode_pair(encoder, {"id": "p", **parse_pair(line)})
        chosen = tokenizer.decode([t for t in pair.chosen.labels if t != IGNORE])
        rejected = tokenizer.decode([t for t in pair.rejected.labels if t != IGNORE])
        assert "GOOD" in chosen and "EARLIER" not in chosen and "and now" not in chosen
        assert "BAD" in rejected and "EARLIER" not in rejected


@pytest.mark.parametrize("key", ["prompt", "messages"])
def test_a_bad_prompt_turn_is_named_by_its_key_and_index_as_a_chat_lines_is(key: str) -> None:
    """Pairs check their prompt turns as jsonl checks its messages (jsonl.chat_turns), naming the key."""
    from loraplug_causal_lm.jsonl import BadLine, parse_line
    from loraplug_causal_lm.pairs import parse_pair

    turns = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]
    with pytest.raises(BadLine, match=rf"^{key}\[1\]\.role is 'robot'; use one of system, user, assistant"):
        parse_pair({key: turns, "chosen": "a", "rejected": "b"})
    with pytest.raises(BadLine, match=r"^messages\[1\]\.role is 'robot'"):
        parse_line({"messages": turns})
    with pytest.raises(BadLine, match=rf"^{key}\[0\] must be an object with a string `content`"):
        parse_pair({key: ["hi"], "chosen": "a", "rejected": "b"})
