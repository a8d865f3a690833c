"""The merged causal LM quantized, saved with ``save_pretrained`` (its quantization config inside, so
``from_pretrained`` reloads it quantized), reloaded, and measured against the unquantized model."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from loraplug import ExportResult, LoraplugError, ModelBundle, RunContext
from loraplug_causal_lm.merge import merged_model
from loraplug_causal_lm.options import CausalLMOptions
from loraplug_causal_lm.quantized import compute_dtype, import_bitsandbytes
from loraplug_quant import measure
from loraplug_quant.options import Bnb4bitExportOptions, Bnb8bitExportOptions, QuantExportOptions

LIBRARY = {"bnb-8bit": "bitsandbytes", "bnb-4bit": "bitsandbytes", "int8": "torchao"}


def quantization_config(kind: str, options: QuantExportOptions, model_options: CausalLMOptions) -> Any:
    """The transformers quantization config for ``kind``; a missing library is a clear error."""
    if kind == "int8":
        try:
            from torchao.quantization import Int8WeightOnlyConfig
        except ImportError as exc:
            raise LoraplugError(
                f"The int8 export needs torchao, which could not be imported ({exc})",
                fix="`pip install 'torchao>=0.12'`, or remove this export",
            ) from exc
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    import_bitsandbytes(f"The {kind} export", "remove this export")
    from transformers import BitsAndBytesConfig

    if isinstance(options, Bnb8bitExportOptions):
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=options.threshold)
    assert isinstance(options, Bnb4bitExportOptions)  # noqa: S101
    dtype = compute_dtype(model_options) if options.compute_dtype == "auto" else options.compute_dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, dtype),
    )


def weights_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def export(kind: str, options: QuantExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext) -> ExportResult:
    from transformers import AutoModelForCausalLM

    from loraplug_causal_lm.quiet import quiet_libraries

    quiet_libraries()
    model_options = ctx.recipe.model.options
    assert isinstance(model_options, CausalLMOptions)  # noqa: S101
    config = quantization_config(kind, options, model_options)
    merged = merged_model(model, ctx)
    trained_dtype = getattr(torch, merged.trained_dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="loraplug-quant-") as tmp:
        # Quantize from float32: the most precise weights there are.
        source = Path(tmp) / "float32"
        merged.module.save_pretrained(str(source), safe_serialization=True)
        quantized = AutoModelForCausalLM.from_pretrained(str(source), quantization_config=config, dtype=trained_dtype, device_map={"": device})
        quantized.save_pretrained(str(out_dir), safe_serialization=True)
        merged.tokenizer.save_pretrained(str(out_dir))
        del quantized
        # Measure what a user gets: the export as from_pretrained loads it back.
        reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), device_map={"": device}).eval()
        evalset, notes = measure.evaluation_set(ctx, merged.tokenizer, options.max_samples)
        reference = merged.module.to(device)
        figures: dict[str, Any] = {"measured_on": evalset.measured_on, **measure.logit_drift(reference, reloaded, evalset)}
        if evalset.has_labels:
            before, after = measure.perplexity(reference, evalset), measure.perplexity(reloaded, evalset)
            figures.update(
                perplexity_unquantized=before, perplexity_quantized=after, perplexity_change_pct=100 * (after / before - 1)
            )
        # The unquantized model a user would otherwise deploy: the merged model in the run's dtype.
        if trained_dtype == torch.float32:
            unquantized_size = weights_size(source)
        else:
            plain = Path(tmp) / "unquantized"
            merged.module.to(trained_dtype).save_pretrained(str(plain), safe_serialization=True)
            unquantized_size = weights_size(plain)
    size = weights_size(out_dir)
    figures.update(
        size_bytes=size,
        unquantized_size_bytes=unquantized_size,
        unquantized_dtype=merged.trained_dtype,
        size_ratio=size / unquantized_size,
    )
    return ExportResult(
        figures=figures,
        notes=merged.notes + notes,
        loads_with=f"AutoModelForCausalLM.from_pretrained(path)  (needs {LIBRARY[kind]})",
    )
