"""Loading a causal LM and its tokenizer, and attaching the adapter (LoRA, LoHa or LoKr) through peft."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraplug import LoraplugError, ModelBundle, RunContext, toolkit
from loraplug.toolkit import local_dir, model_load_error, torch_dtype
from loraplug_causal_lm.options import (
    PRESETS,
    CausalLMOptions,
    LohaOptions,
    LokrOptions,
    LoraOptions,
    LycorisOptions,
)
from loraplug_causal_lm.presets import TINY_PRESETS
from loraplug_causal_lm.quiet import quiet_libraries

#: How this machine loaded the tokenizer, which transformers 5 keeps in its init arguments and so writes
#: into every tokenizer_config.json saved from it (merged, onnx, quantized exports): not for a published model.
LOAD_TIME_KEYS = ("is_local", "local_files_only", "cache_dir")


def locate(options: CausalLMOptions, cache_dir: Path) -> str:
    """What to hand to ``from_pretrained``: a preset's cached directory, a local directory or a hub id — or,
    with ``shrink``, the cached directory of the shrunk random model of that architecture (built on first use)."""
    if options.shrink and options.pretrained not in PRESETS:
        from loraplug_causal_lm.smoke import shrunk_dir

        return str(shrunk_dir(options.pretrained, options.revision, options.trust_remote_code, cache_dir))
    return toolkit.locate(options.pretrained, cache_dir, TINY_PRESETS)


def load_causal_lm(
    options: CausalLMOptions, cache_dir: Path, *, dtype: str | None = None, device: Any = None
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from ``options``; ``dtype`` overrides ``options.dtype`` for an unquantized load.

    With ``options.quantization`` (QLoRA) the model is loaded quantized, computes in
    :func:`~loraplug_causal_lm.quantized.compute_dtype` and is placed on ``device`` (default: the first
    CUDA GPU, else the CPU), since bitsandbytes models cannot be moved after loading.
    """
    quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = locate(options, cache_dir)
    wanted = dtype or options.dtype
    kwargs: dict[str, Any] = {
        "revision": options.revision,
        "trust_remote_code": options.trust_remote_code,
        "dtype": "auto" if wanted == "auto" else torch_dtype(wanted),
        "low_cpu_mem_usage": True,
    }
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    if options.quantization:
        from loraplug_causal_lm.quantized import bnb_config, compute_dtype

        kwargs["quantization_config"] = bnb_config(options)
        kwargs["dtype"] = torch_dtype(compute_dtype(options))
        kwargs["device_map"] = {"": str(device or ("cuda" if torch.cuda.is_available() else "cpu"))}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=options.revision, trust_remote_code=options.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        layout = "a transformers checkpoint (config.json, weights, tokenizer)"
        raise model_load_error(
            "model", options.pretrained, source, exc, layout=layout, preset="tiny-llama"
        ) from exc
    if tokenizer.pad_token is None:
        # Padding never enters the loss (labels are -100 there), so reusing EOS as pad is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    for key in LOAD_TIME_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    return model, tokenizer


def build(options: CausalLMOptions, ctx: RunContext) -> ModelBundle:
    model, tokenizer = load_causal_lm(options, ctx.cache_dir, device=ctx.device)
    model.requires_grad_(False)
    if options.quantization:
        from loraplug_causal_lm.quantized import prepare_for_training

        model = prepare_for_training(model, options)
    elif options.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    source = locate(options, ctx.cache_dir)
    if options.shrink and options.pretrained not in PRESETS:
        from loraplug_causal_lm.smoke import describe

        ctx.info(
            f"model: a shrunk random {describe(Path(source))} built from the config of {options.pretrained}, "
            "with its tokenizer and chat template (model.shrink)"
        )
    return ModelBundle(
        kind="causal-lm",
        module=model,
        components={"tokenizer": tokenizer},
        base=options.pretrained,
        base_dir=local_dir(source),
    )


def lora_config(options: LoraOptions) -> Any:
    quiet_libraries()
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
        bias=options.bias,
        use_rslora=options.use_rslora,
        use_dora=options.use_dora,
        init_lora_weights=True if options.init == "default" else options.init,
        modules_to_save=options.modules_to_save or None,
    )


def lycoris_config(options: LycorisOptions) -> Any:
    """peft's ``LoHaConfig`` or ``LoKrConfig`` from the adapter's options."""
    quiet_libraries()
    from peft import LoHaConfig, LoKrConfig, TaskType

    common: dict[str, Any] = {
        "task_type": TaskType.CAUSAL_LM,
        "r": options.r,
        "alpha": options.alpha,
        "rank_dropout": options.rank_dropout,
        "module_dropout": options.module_dropout,
        "target_modules": options.target_modules,
        "modules_to_save": options.modules_to_save or None,
    }
    if isinstance(options, LokrOptions):
        init: bool | str = True if options.init == "default" else "lycoris"
        return LoKrConfig(
            **common,
            decompose_both=options.decompose_both,
            decompose_factor=options.decompose_factor,
            init_weights=init,
        )
    assert isinstance(options, LohaOptions)  # noqa: S101 — the two kinds of LycorisOptions
    return LoHaConfig(**common)


def wrap(options: LoraOptions | LycorisOptions, bundle: ModelBundle) -> ModelBundle:
    from loraplug_hf import attach_peft

    config = lora_config(options) if isinstance(options, LoraOptions) else lycoris_config(options)
    what = "LoRA" if isinstance(options, LoraOptions) else type(config).__name__.removesuffix("Config")
    if what != "LoRA" and (
        getattr(bundle.module, "is_loaded_in_4bit", False)
        or getattr(bundle.module, "is_loaded_in_8bit", False)
    ):
        # peft's LoHa/LoKr layers rebuild ΔW in the shape of the base weight, which 4/8-bit storage is not.
        raise LoraplugError(
            f"{what} cannot train on a quantized base (model.quantization): peft implements it for plain linear layers only",
            where="adapter.kind",
            fix='Use kind = "lora" for QLoRA, or remove model.quantization to train LoHa/LoKr on the full-precision base',
        )
    peft_model = attach_peft(bundle.module, config, what=what)
    if isinstance(options, LoraOptions) and options.init_from is not None:
        from loraplug_causal_lm.initial_adapter import load_initial_adapter

        load_initial_adapter(peft_model, options.init_from, config)
    return ModelBundle(
        kind=bundle.kind,
        module=peft_model,
        components=bundle.components,
        base=bundle.base,
        base_dir=bundle.base_dir,
        lr_scales=bundle.lr_scales,
    )
