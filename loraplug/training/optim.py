"""AdamW over the trainable parameters, and the warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from loraplug.errors import LoraplugError
from loraplug.recipe.sections import TrainSection


def _decays(name: str, param: torch.nn.Parameter) -> bool:
    # Biases, norm weights and other vectors (DoRA magnitudes) are not decayed: shrinking them toward
    # zero changes what the layer computes rather than regularising it.
    return param.ndim >= 2 and "norm" not in name.lower()


def build_optimizer(
    module: torch.nn.Module, train: TrainSection, lr_scales: Mapping[str, float], device: torch.device | None = None
) -> torch.optim.AdamW:
    """AdamW on exactly the parameters that require gradients, grouped by decay and lr scale.

    :param device: where training will run. The optimizer is built before accelerate moves the model
        there, so the parameters' own device would say CPU; fused AdamW (one kernel for all
        parameters) is used on CUDA.
    """
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
    param_groups: list[dict[str, Any]] = [
        {"params": params, "weight_decay": train.weight_decay if decays else 0.0, "lr": train.lr * scale}
        for (decays, scale), params in groups.items()
    ]
    on_cuda = (device.type == "cuda") if device is not None else all(p.is_cuda for g in param_groups for p in g["params"])
    fused = on_cuda and all(p.is_floating_point() for g in param_groups for p in g["params"])
    return torch.optim.AdamW(param_groups, lr=train.lr, betas=train.betas, eps=train.eps, fused=fused or None)


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


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, train))
