"""Constructing each optimizer from the core's parameter groups and the validated ``[optimizer]`` table.

Each library is imported here, inside the builder of its kind, so a recipe pays only for the
optimizer it names, and a missing optional library is an error that says what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from loraplug import LoraplugError, RunContext
from loraplug_optimizers.options import AdafactorOptions, AdamW8bitOptions, LionOptions, ProdigyOptions

#: Below this, Prodigy's estimate is scaled down so far that it barely trains: an AdamW lr left in.
PRODIGY_LOW_LR = 0.1


def _require(module: str, kind: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LoraplugError(
            f"The {kind} optimizer needs the {module} library, which is not installed ({exc})",
            where="train.optimizer",
            fix=f"pip install 'loraplug-optimizers[{extra}]' (or pick another train.optimizer)",
        ) from exc


def adamw8bit(options: AdamW8bitOptions, groups: list[dict[str, Any]], ctx: RunContext) -> Any:
    bnb = _require("bitsandbytes", "adamw8bit", "8bit")
    return bnb.optim.AdamW8bit(
        groups,
        lr=groups[0]["lr"],
        betas=options.betas,
        eps=options.eps,
        weight_decay=0.0,
        min_8bit_size=options.min_8bit_size,
    )


def lion(options: LionOptions, groups: list[dict[str, Any]], ctx: RunContext) -> Any:
    from lion_pytorch import Lion

    return Lion(groups, lr=groups[0]["lr"], betas=options.betas, weight_decay=0.0)


def prodigy(options: ProdigyOptions, groups: list[dict[str, Any]], ctx: RunContext) -> Any:
    from prodigyopt import Prodigy

    lr = ctx.recipe.train.lr if ctx.recipe is not None else groups[0]["lr"]
    if lr < PRODIGY_LOW_LR:
        ctx.warn(
            f"train.lr = {lr:g} with the prodigy optimizer: Prodigy estimates the step size itself and train.lr "
            f"multiplies that estimate, so it is usually 1.0 — this run takes steps {1 / lr:.0f}× smaller than it estimates"
        )
    return Prodigy(
        groups,
        lr=groups[0]["lr"],
        betas=options.betas,
        beta3=options.beta3,
        eps=options.eps,
        weight_decay=0.0,
        decouple=options.decouple,
        use_bias_correction=options.use_bias_correction,
        safeguard_warmup=options.safeguard_warmup,
        d0=options.d0,
        d_coef=options.d_coef,
        growth_rate=float("inf") if options.growth_rate is None else options.growth_rate,
    )


def adafactor(options: AdafactorOptions, groups: list[dict[str, Any]], ctx: RunContext) -> Any:
    optimization = _require("transformers.optimization", "adafactor", "adafactor")
    return optimization.Adafactor(
        groups,
        lr=groups[0]["lr"],
        eps=options.eps,
        clip_threshold=options.clip_threshold,
        decay_rate=options.decay_rate,
        beta1=options.beta1,
        weight_decay=0.0,
        scale_parameter=options.scale_parameter,
        relative_step=False,  # train.lr and train.schedule drive the step size, as for every kind
        warmup_init=False,
    )


#: kind → builder; each group's own ``lr`` and ``weight_decay`` (set by the core) override the defaults above.
BUILDERS: dict[str, Callable[[Any, list[dict[str, Any]], RunContext], Any]] = {
    "adamw8bit": adamw8bit,
    "lion": lion,
    "prodigy": prodigy,
    "adafactor": adafactor,
}
