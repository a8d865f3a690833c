"""The classifier's own exports: a PEFT adapter directory (with the trained head and the label names), and
the merged model that plain ``AutoModelForSequenceClassification.from_pretrained`` loads.

Each is read back the way a user reads it and compared with the trained model's logits on inputs with
a padded row (``check_parity``). Imported by the ``loraplug_export`` hook body only (it imports torch).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from loraplug import ExportResult, LoraplugError, ModelBundle, RunContext
from loraplug.toolkit import parity_tolerance, torch_dtype
from loraplug_hf import quiet_libraries
from loraplug_hf.classifier import example_inputs, from_pretrained, logit_difference, weights_dtype
from loraplug_text_classification.options import MergedExportOptions, PeftExportOptions
from loraplug_text_classification.presets import LIBRARIES

PEFT_LOADS_WITH = (
    "PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, "
    "config=AutoConfig.from_pretrained(path)), path)"
)


def _parity(model: ModelBundle, loaded: Any, tolerance: float, what: str, ctx: RunContext) -> dict[str, Any]:
    """The largest logit difference of ``loaded`` from the trained model; over ``tolerance`` fails the export."""
    vocab, pad_id = int(model.module.config.vocab_size), int(model.components["tokenizer"].pad_token_id)
    difference = logit_difference(model.module, loaded, example_inputs(vocab, pad_id, ctx.seed)[1])
    if not difference <= tolerance:  # NaN fails too
        raise LoraplugError(
            f"{what} read back gives logits {difference:.2e} away from the trained model's (tolerance {tolerance:g})",
            fix="Raise the export's `tolerance` if that is acceptable, or report it to the authors of "
            "loraplug-text-classification with the run's recipe.toml",
        )
    return {"max_abs_logit_diff_vs_trained": difference, "tolerance": tolerance}


def export_peft(
    options: PeftExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    """adapter_config.json + adapter_model.safetensors (LoRA and the head), config.json with the labels, the tokenizer."""
    import torch

    quiet_libraries(*LIBRARIES)
    from peft import PeftModel

    module = model.module
    module.save_pretrained(str(out_dir), safe_serialization=True)
    # The label names and the pad id the head reads by: a user's base is built from this config.
    config = copy.deepcopy(module.get_base_model().config)
    config.save_pretrained(str(out_dir))
    model.components["tokenizer"].save_pretrained(str(out_dir))
    figures: dict[str, Any] = {"labels": [config.id2label[i] for i in range(config.num_labels)]}
    if options.check_parity:
        base = from_pretrained(model.base_dir or model.base, config=config, dtype=torch.float32)
        loaded = PeftModel.from_pretrained(base, str(out_dir)).eval()
        tolerance = parity_tolerance(weights_dtype(module), given=options.tolerance)
        figures |= _parity(model, loaded, tolerance, "The PEFT adapter", ctx)
    return ExportResult(
        figures=figures,
        notes=["the classification head is saved in full with the adapter (peft modules_to_save)"],
        loads_with=PEFT_LOADS_WITH,
    )


def export_merged(
    options: MergedExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    """The run's deployable model (merged once, in float32), saved in the trained dtype or the one asked for."""
    deployable = ctx.deployable(model)
    save_dtype = deployable.dtype if options.dtype == "auto" else options.dtype
    # The deployable is shared with the run's other exports: cast a copy, never it.
    merged = (
        deployable.module
        if save_dtype == "float32"
        else copy.deepcopy(deployable.module).to(torch_dtype(save_dtype))
    )
    deployable.save_files_beside(out_dir)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    figures: dict[str, Any] = {"dtype": save_dtype}
    if options.check_parity:
        quiet_libraries(*LIBRARIES)
        loaded = from_pretrained(out_dir, dtype=torch_dtype("float32")).eval()
        tolerance = parity_tolerance(deployable.dtype, save_dtype, given=options.tolerance)
        figures |= _parity(model, loaded, tolerance, "The merged model", ctx)
    return ExportResult(
        figures=figures,
        notes=list(deployable.notes),
        loads_with="AutoModelForSequenceClassification.from_pretrained(path)",
    )
