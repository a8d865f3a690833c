"""The run's deployable model quantized, saved, loaded back, and measured against the unquantized one.

Two ways, picked by what the model kind's deployable offers (``ctx.deployable(model)``), never by the
model kind:

* it is saved with ``save_pretrained`` (``Deployable.from_pretrained``): quantized by transformers while
  loading (bitsandbytes or torchao config), saved with its quantization config inside, so
  ``from_pretrained`` reloads it quantized — every kind;
* any other ``torch.nn.Module``: ``int8`` only — torchao's int8 weight-only quantization applied to the
  merged module's linear layers, written as safetensors with torchao's tensor layout in the header
  metadata, loaded back into the module's own architecture. bitsandbytes' kinds need transformers'
  loader and are refused.
"""

from __future__ import annotations

import copy
import importlib
import tempfile
from pathlib import Path
from typing import Any

import torch

from loraplug import Deployable, ExportResult, LoraplugError, ModelBundle, RunContext
from loraplug.toolkit import BITSANDBYTES_INSTALL, TORCHAO_INSTALL, torch_dtype
from loraplug_hf import quiet_libraries
from loraplug_quant import measure
from loraplug_quant.options import Bnb4bitExportOptions, Bnb8bitExportOptions, QuantExportOptions

LIBRARY = {"bnb-8bit": "bitsandbytes", "bnb-4bit": "bitsandbytes", "int8": "torchao"}
INSTALL = {"bitsandbytes": BITSANDBYTES_INSTALL, "torchao": TORCHAO_INSTALL}
#: The int8 export of a module without save_pretrained: one safetensors file.
WEIGHTS_FILE = "model.safetensors"


def _import(kind: str) -> None:
    library = LIBRARY[kind]
    try:
        importlib.import_module(library)
    except ImportError as exc:
        raise LoraplugError(
            f"The {kind} export needs {library}, which could not be imported ({exc})",
            fix=f"`{INSTALL[library]}`, or remove this export",
        ) from exc


def quantization_config(kind: str, options: QuantExportOptions, compute_dtype: str) -> Any:
    """The transformers quantization config for ``kind``; a missing library is a clear error."""
    _import(kind)
    if kind == "int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    from transformers import BitsAndBytesConfig

    if isinstance(options, Bnb8bitExportOptions):
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=options.threshold)
    assert isinstance(options, Bnb4bitExportOptions)  # noqa: S101
    dtype = compute_dtype if options.compute_dtype == "auto" else options.compute_dtype
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=torch_dtype(dtype),
    )


def weights_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _reference(deployable: Deployable, device: str) -> Any:
    """The unquantized merged module on ``device``; a copy when it must move (other exports share it)."""
    return deployable.module if device == "cpu" else copy.deepcopy(deployable.module).to(device)


def export(
    kind: str, options: QuantExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext
) -> ExportResult:
    deployable = ctx.deployable(model)
    if deployable.from_pretrained is None and kind != "int8":
        raise LoraplugError(
            f"The {kind} export quantizes through transformers' from_pretrained, and the model kind {model.kind!r} "
            "is not saved that way",
            fix="Use the `int8` export (torchao, any PyTorch model) instead, or remove this export",
        )
    merge_check = deployable.verify_merge()
    if deployable.from_pretrained is None:
        figures, notes, loads_with = _export_module(options, deployable, out_dir, ctx)
    else:
        figures, notes, loads_with = _export_pretrained(kind, options, deployable, out_dir, ctx)
    if merge_check:
        figures["merge_check"] = merge_check
    return ExportResult(figures=figures, notes=list(deployable.notes) + notes, loads_with=loads_with)


def _export_pretrained(
    kind: str, options: QuantExportOptions, deployable: Deployable, out_dir: Path, ctx: RunContext
) -> tuple[dict[str, Any], list[str], str]:
    quiet_libraries("transformers")
    assert deployable.from_pretrained is not None  # noqa: S101
    config = quantization_config(kind, options, deployable.compute_dtype)
    trained_dtype = torch_dtype(deployable.dtype)
    device = _device()
    with tempfile.TemporaryDirectory(prefix="loraplug-quant-") as tmp:
        # Quantize from float32: the most precise weights there are.
        source = Path(tmp) / "float32"
        deployable.module.save_pretrained(str(source), safe_serialization=True)
        quantized = deployable.from_pretrained(
            source, quantization_config=config, dtype=trained_dtype, device_map={"": device}
        )
        # The tokenizer, then save_pretrained writes the quantized config.json over the plain one.
        deployable.save_files_beside(out_dir)
        quantized.save_pretrained(str(out_dir), safe_serialization=True)
        del quantized
        # Measure what a user gets: the export as from_pretrained loads it back.
        reloaded = deployable.from_pretrained(out_dir, device_map={"": device}).eval()
        figures, notes = _measure(options, deployable, reloaded, ctx, device)
        # The unquantized model a user would otherwise deploy: the merged model in the run's dtype.
        if deployable.dtype == "float32":
            unquantized_size = weights_size(source)
        else:
            plain = Path(tmp) / "unquantized"
            copy.deepcopy(deployable.module).to(trained_dtype).save_pretrained(
                str(plain), safe_serialization=True
            )
            unquantized_size = weights_size(plain)
    loads_with = f"{deployable.loads_with or 'from_pretrained(path)'}  (needs {LIBRARY[kind]})"
    return figures | _sizes(out_dir, unquantized_size, deployable.dtype), notes, loads_with


def _export_module(
    options: QuantExportOptions, deployable: Deployable, out_dir: Path, ctx: RunContext
) -> tuple[dict[str, Any], list[str], str]:
    """torchao int8 weight-only on the merged module itself, for models without ``save_pretrained``."""
    _import("int8")
    from safetensors.torch import save_file, save_model
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    device = _device()
    quantized = copy.deepcopy(deployable.module).to(device)
    quantize_(quantized, Int8WeightOnlyConfig())
    tensors, metadata = flatten_tensor_state_dict(quantized.state_dict())
    deployable.save_files_beside(out_dir)
    save_file(
        {k: v.contiguous().cpu() for k, v in tensors.items()}, str(out_dir / WEIGHTS_FILE), metadata=metadata
    )
    del quantized
    # Measure what a user gets: the file loaded back into the model's own architecture.
    reloaded = load_int8(deployable.module, out_dir / WEIGHTS_FILE).to(device).eval()
    figures, notes = _measure(options, deployable, reloaded, ctx, device)
    with tempfile.TemporaryDirectory(prefix="loraplug-quant-") as tmp:
        plain = (
            deployable.module
            if deployable.dtype == "float32"
            else copy.deepcopy(deployable.module).to(torch_dtype(deployable.dtype))
        )
        save_model(plain, str(Path(tmp) / WEIGHTS_FILE))
        unquantized_size = weights_size(Path(tmp))
    notes.append(
        "torchao int8 weight-only on the merged module's linear layers: the file holds torchao's int8 tensors, "
        "flattened (torchao.prototype.safetensors); build the model, then load them with assign=True (docs/formats.md)"
    )
    loads_with = (
        "model.load_state_dict(unflatten_tensor_state_dict(load_file(path), safe_open(path, 'pt').metadata())[0], "
        "assign=True)  (torchao.prototype.safetensors; needs torchao)"
    )
    return figures | _sizes(out_dir, unquantized_size, deployable.dtype), notes, loads_with


def load_int8(architecture: Any, path: Path) -> Any:
    """A copy of ``architecture`` holding the int8 weights of ``path`` (written by the int8 export of a module)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    state, rest = unflatten_tensor_state_dict(load_file(str(path)), metadata)
    module = copy.deepcopy(architecture)
    module.load_state_dict({**state, **rest}, assign=True)
    return module


def _measure(
    options: QuantExportOptions, deployable: Deployable, reloaded: Any, ctx: RunContext, device: str
) -> tuple[dict[str, Any], list[str]]:
    evalset, notes = measure.evaluation_set(ctx, options.max_samples)
    reference = _reference(deployable, device)
    figures: dict[str, Any] = {
        "measured_on": evalset.measured_on,
        **measure.drift(deployable, reference, reloaded, evalset),
    }
    figures |= measure.scores(deployable, reference, reloaded, evalset)
    return figures, notes


def _sizes(out_dir: Path, unquantized_size: int, dtype: str) -> dict[str, Any]:
    size = weights_size(out_dir)
    return {
        "size_bytes": size,
        "unquantized_size_bytes": unquantized_size,
        "unquantized_dtype": dtype,
        "size_ratio": size / unquantized_size,
    }
