"""What the run pages show of a run besides loraplug's own readers: its duration, the tail of its output,
recipe differences, the export kinds it may get, and how to load each export."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loraplug import PluginHost


def duration(started: str | None, finished: str | None) -> float | None:
    if not started:
        return None
    try:
        start = datetime.fromisoformat(started)
        end = datetime.fromisoformat(finished) if finished else datetime.now(UTC)
    except ValueError:
        return None
    return round((end - start).total_seconds(), 1)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def flatten(table: Any, prefix: str = "") -> dict[str, Any]:
    """A recipe as ``{"train.lr": 0.003, "export[0].kind": "peft"}``, for diffs."""
    out: dict[str, Any] = {}
    if isinstance(table, dict):
        for key, value in table.items():
            out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(table, list) and table and all(isinstance(t, dict) for t in table):
        for index, value in enumerate(table):
            out |= flatten(value, f"{prefix}[{index}]")
    else:
        out[prefix] = table
    return out


def auto_class(config: Path) -> str:
    """The transformers Auto class that loads a saved model, from its config's ``architectures``."""
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        architectures = []
    for suffix in ("ForCausalLM", "ForSequenceClassification"):
        if any(str(a).endswith(suffix) for a in architectures):
            return f"AutoModel{suffix}"
    return "AutoModel"


def load_snippet(manifest: dict[str, Any], run_path: str, root: Path) -> str:
    """How to load an export, by what it holds (the plugins' formats; docs/formats.md)."""
    folder = f"{run_path}/{manifest.get('dir', '')}"
    names = {Path(str(f.get("path", ""))).name for f in manifest.get("files", [])}
    if "adapter_config.json" in names:
        return f'from peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, "{folder}")'
    if "pytorch_lora_weights.safetensors" in names:
        return f'pipe.load_lora_weights("{folder}")'
    if "model_index.json" in names:
        return (
            f'from diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained("{folder}")'
        )
    if "config.json" in names:
        auto = auto_class(root / folder / "config.json")
        return f'from transformers import {auto}\nmodel = {auto}.from_pretrained("{folder}")'
    if any(n.endswith(".onnx") for n in names):
        onnx = next(n for n in sorted(names) if n.endswith(".onnx"))
        return f'import onnxruntime\nsession = onnxruntime.InferenceSession("{folder}/{onnx}")'
    return f"# the files are in {folder}"


def export_kinds(host: PluginHost, recipe: dict[str, Any]) -> list[str]:
    """The export kinds installed for a run's model and adapter kinds."""
    model = str(recipe.get("model", {}).get("kind", ""))
    adapter = str(recipe.get("adapter", {}).get("kind", ""))
    return host.registry.exports_for(model, adapter) if model and adapter else []
