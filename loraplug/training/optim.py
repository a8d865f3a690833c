"""The optimizer's parameter groups, the core's own ``adamw``, and the warmup-then-decay schedule.

The optimizer itself is a kind (``train.optimizer``, options in ``[optimizer]``) built through the hook
``loraplug_build_optimizer``: the core decides *which* parameters train, at what lr and with what
weight decay (:func:`param_groups`); the optimizer kind decides how they are updated. ``adamw`` is the
core's own kind, served by its built-in plugin (loraplug/builtin.py) like any plugin's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from loraplug.errors import LoraplugError
from loraplug.recipe.sections import AdamWOptions, TrainSection

if TYPE_CHECKING:
    from loraplug.context import RunContext
    from loraplug.plugins import PluginHost
    from loraplug.recipe.model import Recipe

#: Builds the optimizer from the parameter groups: the ``loraplug_build_optimizer`` hook in a run.
OptimizerMaker = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def _decays(name: str, param: torch.nn.Parameter) -> bool:
    # Biases, norm weights and other vectors (DoRA magnitudes) are not decayed: shrinking them toward
    # zero changes what the layer computes rather than regularising it.
    return param.ndim >= 2 and "norm" not in name.lower()


def param_groups(
    module: torch.nn.Module, train: TrainSection, lr_scales: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Exactly the parameters that require gradients, grouped by weight decay and lr scale."""
    groups: dict[tuple[bool, float], list[torch.nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((s for prefix, s in lr_scales.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((_decays(name, param), scale), []).append(param)
    if not groups:
        raise LoraplugError(
            "The model has no trainable parameters after the adapter was attached",
            fix="Check adapter.target_modules: none of the named modules exist in this model",
        )
    return [
        {"params": params, "weight_decay": train.weight_decay if decays else 0.0, "lr": train.lr * scale}
        for (decays, scale), params in groups.items()
    ]


def adamw(options: AdamWOptions, groups: list[dict[str, Any]], device: Any = None) -> torch.optim.AdamW:
    """torch's AdamW; fused (one kernel for all parameters) when training runs on CUDA.

    :param device: where training will run. The optimizer is built before accelerate moves the model
        there, so the parameters' own device would say CPU.
    """
    on_cuda = (
        (torch.device(device).type == "cuda")
        if device is not None
        else all(p.is_cuda for g in groups for p in g["params"])
    )
    fused = on_cuda and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=groups[0]["lr"], betas=options.betas, eps=options.eps, fused=fused or None
    )


def build_optimizer(
    module: torch.nn.Module,
    train: TrainSection,
    lr_scales: Mapping[str, float],
    device: torch.device | None = None,
    *,
    make: OptimizerMaker | None = None,
) -> torch.optim.Optimizer:
    """The optimizer over :func:`param_groups`: ``make`` (the recipe's optimizer kind), or the core's
    AdamW at its defaults when none is given (benchmarks, tests of the loop)."""
    groups = param_groups(module, train, lr_scales)
    return make(groups) if make is not None else adamw(AdamWOptions(), groups, device)


def optimizer_maker(host: PluginHost, recipe: Recipe, ctx: RunContext) -> OptimizerMaker:
    """Builds the recipe's optimizer kind through ``loraplug_build_optimizer``, on the plugin serving it."""

    def make(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return host.build_optimizer(recipe, groups, ctx)

    return make


def lr_factor(step: int, total_steps: int, train: TrainSection) -> float:
    """The multiplier of each group's peak lr before optimizer step ``step`` (counting from 0)."""
    warmup = train.warmup_steps or int(train.warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if train.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    floor = train.min_lr_ratio
    if train.schedule == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainSection, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, train))
