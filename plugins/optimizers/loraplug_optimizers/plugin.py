"""The hooks of loraplug-optimizers: four optimizer kinds, each constructed in :mod:`loraplug_optimizers.build`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from loraplug import KindSpec, Options, RunContext, hookimpl

#: kind → (options model, summary)
KINDS: dict[str, tuple[str, str]] = {
    "adamw8bit": (
        "AdamW8bitOptions",
        "AdamW with 8-bit state (bitsandbytes): about a quarter of AdamW's optimizer memory",
    ),
    "lion": ("LionOptions", "Lion (lion-pytorch): sign updates; lr 3-10x below AdamW's"),
    "prodigy": ("ProdigyOptions", "Prodigy (prodigyopt): estimates its own step size; keep train.lr at 1.0"),
    "adafactor": (
        "AdafactorOptions",
        "Adafactor (transformers): factored second moments, the smallest state",
    ),
}


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    for kind, (options, summary) in KINDS.items():
        register(KindSpec("optimizer", kind, f"loraplug_optimizers.options:{options}", summary))


@hookimpl
def loraplug_build_optimizer(
    kind: str, options: Options, param_groups: list[dict[str, Any]], ctx: RunContext
) -> Any:
    from loraplug_optimizers import build

    return build.BUILDERS[kind](options, param_groups, ctx)
