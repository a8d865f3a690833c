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
        "model": {
            "kind": "causal-lm",
            "pretrained": "tiny-llama",
            "max_length": 64,
            "sample_max_new_tokens": 8,
        },
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


def adapter_for_exactness(
    tmp_path: Path,
    lm_recipe: Any,
    data: Path,
    name: str,
    *,
    batch_size: int,
    accumulation: int,
    max_steps: int,
    packing: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train on ``data`` with settings that make any change in how tokens are weighted visible in the
    weights; return the trained parameters and ``run.json``.

    Adam's epsilon is large, so an update is proportional to the gradient rather than its sign;
    no warmup, decay, clipping or dropout blur the comparison.
    """
    from safetensors.torch import load_file

    from loraplug.testing import run_cli

    recipe = lm_recipe(
        run={"name": name},
        data={"path": str(data), "val_fraction": 0.0},
        model={"max_length": 256, "packing": packing},
        adapter={"dropout": 0.0, "r": 4},
        train={
            "max_steps": max_steps,
            "batch_size": batch_size,
            "grad_accum_steps": accumulation,
            "lr": 0.5,
            "eps": 1.0,
            "schedule": "constant",
            "max_grad_norm": 0,
        },
        eval={"sample_prompts": []},
        export=[],
    )
    result = run_cli("run", recipe)
    assert result.exit_code == 0, result.output  # noqa: S101 — a test helper
    run_dir = tmp_path / "runs" / name
    return load_file(str(run_dir / "adapter" / "adapter.safetensors")), json.loads(
        (run_dir / "run.json").read_text()
    )
