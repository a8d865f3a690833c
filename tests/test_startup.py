"""`loraplug --help` and `loraplug plugins list` must stay instant: no torch on their import path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import sys
from loraplug.cli.main import main
code = main({args!r})
heavy = sorted(m for m in ("torch", "transformers", "diffusers", "peft", "accelerate", "onnx", "matplotlib", "wandb") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["plugins", "list"],
        ["plugins", "list", "--json"],
        ["recipe", "--help"],
        ["runs", "list", "--json"],
    ],
)
def test_light_commands_import_no_heavy_library(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stderr or proc.stderr.rstrip().endswith("HEAVY="), proc.stderr


def test_plugins_list_json_shows_first_party_plugins() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loraplug", "plugins", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    plugins = {p["distribution"]: p for p in json.loads(proc.stdout)}
    causal = plugins["loraplug-causal-lm"]
    assert causal["status"] == "ok"
    kinds = {(k["stage"], k["kind"]) for k in causal["kinds"]}
    assert {
        ("data", "jsonl"),
        ("model", "causal-lm"),
        ("adapter", "lora"),
        ("export", "peft"),
        ("export", "merged"),
    } <= kinds
    assert "loraplug_train_step" in causal["hooks"]
