"""Test helpers for recipes on the tiny-llama preset (used by loraplug's own tests; handy for plugins)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from loraplug.testing import write_recipe


def chat_lines(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Prompt/response pairs of deliberately different lengths."""
    rng = random.Random(seed)
    words = ["rain", "sun", "wind", "snow", "fog", "cloud", "storm", "mild", "cold", "warm"]
    lines = []
    for i in range(count):
        prompt = f"q{i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        response = " ".join(rng.choice(words) for _ in range(rng.randint(1, 20)))
        lines.append({"prompt": prompt, "response": response})
    return lines


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_lm_recipe(tmp_path: Path, **changes: dict[str, Any]) -> Path:
    """A recipe for tiny-llama on a small JSONL file that trains in a few seconds."""
    data = write_jsonl(tmp_path / "train.jsonl", chat_lines(24))
    recipe: dict[str, Any] = {
        "run": {"name": "tiny", "output_dir": str(tmp_path / "runs"), "seed": 7},
        "data": {"kind": "jsonl", "path": str(data), "val_fraction": 0.25},
        "model": {"kind": "causal-lm", "pretrained": "tiny-llama", "max_length": 64, "sample_max_new_tokens": 8},
        "adapter": {"kind": "lora", "r": 4, "alpha": 8},
        "train": {"max_steps": 4, "batch_size": 4, "lr": 1e-3, "log_every_n_steps": 2},
        "eval": {"sample_prompts": ["q: rain"]},
        "export": [{"kind": "peft"}, {"kind": "merged"}],
    }
    for section, values in changes.items():
        if isinstance(values, list):
            recipe[section] = values
        else:
            recipe.setdefault(section, {}).update(values)
    return write_recipe(tmp_path / "recipe.toml", recipe)


def trained_tiny_run(root: Path, **changes: Any) -> Path:
    """Train :func:`tiny_lm_recipe` (with ``changes``) under ``root`` through the CLI; return the run directory.

    The working directory becomes ``root``; module-scoped fixtures share one run between tests.
    """
    import os

    from loraplug.testing import run_cli

    os.chdir(root)
    result = run_cli("run", tiny_lm_recipe(root, **changes))
    assert result.exit_code == 0, result.output  # noqa: S101 — a test helper
    return root / "runs" / "tiny"
