"""Exports other tools load: a PEFT adapter directory, and a merged transformers checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraplug import ExportResult, LoraplugError, ModelBundle, RunContext
from loraplug_causal_lm.merge import quantized_merge_refused
from loraplug_causal_lm.options import CausalLMOptions, MergedExportOptions, PeftExportOptions

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 0123456789"
#: What names a LoRA matrix in a PEFT adapter file (as llama.cpp's converter tells them apart).
LORA_PARTS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B")
#: What names a LoHa or LoKr factor (peft's parameter names, LyCORIS' too).
LYCORIS_PARTS = (
    ".hada_w1_a",
    ".hada_w1_b",
    ".hada_w2_a",
    ".hada_w2_b",
    ".hada_t1",
    ".hada_t2",
    ".lokr_w",
    ".lokr_t",
)
PEFT_PREFIX = "base_model.model."
PEFT_TYPE_NAMES = {"LOHA": "LoHa", "LOKR": "LoKr"}


def _peft_type(model: ModelBundle) -> str:
    """``LORA``, ``LOHA`` or ``LOKR``: the trained adapter's peft type."""
    return str(getattr(model.module.peft_config["default"].peft_type, "value", "LORA"))


def _model_card(model: ModelBundle, ctx: RunContext) -> str:
    adapter = PEFT_TYPE_NAMES.get(_peft_type(model), "LoRA")
    metrics = (
        "\n".join(f"- {k}: {v}" for k, v in ctx.final_metrics.items()) or "- (see the run's metrics.jsonl)"
    )
    return f"""---
library_name: peft
base_model: {model.base}
tags: [{adapter.lower()}, loraplug]
---

# {adapter} adapter for {model.base}

Trained with [loraplug](https://github.com/loraplug/loraplug) from the recipe below.

## Load it

```python
from transformers import AutoModelForCausalLM
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("{model.base}")
model = PeftModel.from_pretrained(base, "path/to/this/directory")
```

## Final metrics

{metrics}

## Recipe

```toml
{ctx.recipe.to_toml()}```
"""


def non_lora_tensors(weights: Path) -> list[str]:
    """The tensors of a PEFT adapter file that are not LoRA pairs (modules saved in full, DoRA magnitudes).

    LoRA-only converters such as llama.cpp's ``convert_lora_to_gguf.py`` refuse a file holding any.
    LoHa/LoKr factors are not counted here: the adapter's type says those are not LoRA.
    """
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        names = list(handle.keys())
    adapter_parts = LORA_PARTS + LYCORIS_PARTS
    return sorted(
        name.removeprefix(PEFT_PREFIX) for name in names if not any(part in name for part in adapter_parts)
    )


def export_peft(
    options: PeftExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    model.module.save_pretrained(str(out_dir), safe_serialization=True)
    if options.model_card:
        (out_dir / "README.md").write_text(_model_card(model, ctx), encoding="utf-8")
    figures = _check_written_adapter(model, out_dir) if options.check_parity else {}
    full = non_lora_tensors(out_dir / "adapter_model.safetensors")
    peft_type = _peft_type(model)
    figures["lora_only"] = not full and peft_type == "LORA"
    notes = []
    if peft_type != "LORA":
        figures["peft_type"] = peft_type
        notes.append(
            f"a {PEFT_TYPE_NAMES.get(peft_type, peft_type)} adapter: PeftModel.from_pretrained loads it, LoRA-only converters such as llama.cpp's "
            "convert_lora_to_gguf.py do not; for GGUF, convert the `merged` export with convert_hf_to_gguf.py instead"
        )
    if full:
        figures["non_lora_tensors"] = full
        shown = ", ".join(full[:3]) + (f" and {len(full) - 3} more" if len(full) > 3 else "")
        notes.append(
            f"not LoRA-only: it also holds {shown} (adapter.modules_to_save trains a module in full), which "
            "LoRA-only converters such as llama.cpp's convert_lora_to_gguf.py refuse; for GGUF, convert the "
            "`merged` export with convert_hf_to_gguf.py instead"
        )
    return ExportResult(
        figures=figures,
        notes=notes,
        loads_with="PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path)",
    )


def _check_written_adapter(model: ModelBundle, out_dir: Path) -> dict[str, Any]:
    """Read the adapter back as PeftModel.from_pretrained would and compare it with the trained weights.

    Cheap (no second base model), and it catches what a user would otherwise find at load time: a
    config peft cannot parse, missing or renamed tensors, weights saved in another dtype.
    """
    from peft import PeftConfig
    from peft.utils import get_peft_model_state_dict, load_peft_weights

    PeftConfig.from_pretrained(str(out_dir))
    written = load_peft_weights(str(out_dir), device="cpu")
    trained = {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model.module).items()}
    if written.keys() != trained.keys():
        missing, extra = sorted(trained.keys() - written.keys()), sorted(written.keys() - trained.keys())
        raise LoraplugError(
            f"The written PEFT adapter's tensors do not match the trained adapter's (missing {missing[:3]}, "
            f"unexpected {extra[:3]})",
            fix="Report it to the authors of loraplug-causal-lm with the run's recipe.toml",
        )
    diff = max((float((written[k].float() - trained[k].float()).abs().max()) for k in trained), default=0.0)
    if diff > 0:
        raise LoraplugError(
            f"The written PEFT adapter differs from the trained one by up to {diff:.2e}",
            fix="Report it to the authors of loraplug-causal-lm with the run's recipe.toml",
        )
    return {"tensors_checked": len(trained), "max_abs_diff_vs_trained": diff}


def _probe_logits(module: Any, tokenizer: Any) -> Any:
    import torch

    ids = tokenizer(PROBE_TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    device = next(module.parameters()).device
    with torch.no_grad():
        return module(input_ids=ids.to(device)).logits.float().cpu()


def export_merged(
    options: MergedExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    """The run's deployable model (merged once into a freshly loaded float32 base, so the trained model is
    untouched and no precision is lost), saved in the trained dtype or the one asked for."""
    import copy

    from loraplug.toolkit import torch_dtype
    from loraplug_causal_lm.quantized import is_quantized

    if not options.dequantize and is_quantized(model.module):
        model_options = ctx.recipe.model.options
        assert isinstance(model_options, CausalLMOptions)  # noqa: S101
        raise quantized_merge_refused(model_options)
    deployable = ctx.deployable(model)
    figures: dict[str, Any] = deployable.verify_merge(options.tolerance) if options.check_parity else {}
    save_dtype = deployable.dtype if options.dtype == "auto" else options.dtype
    # The deployable is shared with the run's other exports: cast a copy, never it.
    merged = (
        deployable.module
        if save_dtype == "float32"
        else copy.deepcopy(deployable.module).to(torch_dtype(save_dtype))
    )
    deployable.save_files_beside(out_dir)  # the tokenizer (and a config.json that save_pretrained rewrites)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    figures["dtype"] = save_dtype
    return ExportResult(
        figures=figures, notes=list(deployable.notes), loads_with="AutoModelForCausalLM.from_pretrained(path)"
    )
