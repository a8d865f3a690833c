"""``adapter.init_from``: a LoRA adapter that starts from an earlier one's weights (a PEFT directory).

The earlier adapter must have the shape of the new one — rank, alpha, target modules — or its update
would be scaled or placed differently; every mismatch is an error naming both values. Loaded after peft
attached the new adapter, so what trains (and is saved) is exactly as without it.

Imported by hook bodies only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loraplug import LoraplugError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
#: The LoraConfig fields that must match: (field, recipe key).
MUST_MATCH = (("r", "adapter.r"), ("lora_alpha", "adapter.alpha"), ("use_rslora", "adapter.use_rslora"))


def load_initial_adapter(peft_model: Any, directory: Path, config: Any) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    fix = "Point adapter.init_from at a PEFT adapter directory (a LoRA run's exports/peft), trained on this base model"
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise LoraplugError(
                f"adapter.init_from: {directory} has no {name}", where="adapter.init_from", fix=fix
            )
    earlier = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
    if earlier.get("peft_type", "LORA") != "LORA":
        raise LoraplugError(
            f"adapter.init_from: {directory} holds a {earlier.get('peft_type')} adapter, and this one is LoRA",
            where="adapter.init_from",
            fix=fix,
        )
    for field, key in MUST_MATCH:
        if field in earlier and earlier[field] != getattr(config, field):
            raise LoraplugError(
                f"adapter.init_from: the adapter in {directory} has {field} = {earlier[field]!r}, and {key} is "
                f"{getattr(config, field)!r}",
                where="adapter.init_from",
                fix=f"Set {key} = {earlier[field]!r}, as the earlier adapter was trained",
            )
    try:
        result = set_peft_model_state_dict(peft_model, load_file(str(directory / WEIGHTS)))
    except RuntimeError as exc:  # a shape that does not fit: another base model or target modules
        message = str(exc).splitlines()[0]
        raise LoraplugError(
            f"adapter.init_from: the weights in {directory} do not fit this model: {message}",
            where="adapter.init_from",
            fix=fix,
        ) from exc
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        example = (missing or result.unexpected_keys)[0]
        raise LoraplugError(
            f"adapter.init_from: the adapter in {directory} does not cover the same modules: {len(missing)} LoRA "
            f"weights missing, {len(result.unexpected_keys)} unexpected (e.g. {example})",
            where="adapter.init_from",
            fix="Set adapter.target_modules to the earlier adapter's (its adapter_config.json's target_modules)",
        )
