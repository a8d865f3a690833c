"""The trained adapter on disk, independent of modality: every trainable parameter, as safetensors.

The loop knows nothing about PEFT or diffusers; what it trains is exactly the parameters that require
gradients, so that is what it saves and restores. Export plugins turn these weights into the formats
other tools read.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from loraplug.errors import LoraplugError
from loraplug.rundir import atomic_write_bytes
from loraplug.runinfo import damaged_weights_error, safetensors_problem
from loraplug.training import zero
from loraplug.training.sharding import full_tensor, shard_like


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every trainable parameter on the CPU (a snapshot: later steps do not change it).

    Under FSDP each parameter is gathered whole from the processes' shards, so every process must call
    this (and gets the whole state)."""
    return {
        name: full_tensor(p).to("cpu", copy=True).contiguous()
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def save_trainable(module: torch.nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    write_trainable(trainable_state(module), path, metadata)


def write_trainable(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a :func:`trainable_state` as safetensors (atomically)."""
    atomic_write_bytes(path, save(state, metadata=metadata or {}))


def load_trainable(module: torch.nn.Module, path: Path) -> None:
    """Load weights written by :func:`save_trainable` into an identically adapted module."""
    if not path.exists():
        raise LoraplugError(
            f"No adapter weights at {path}", fix="Point at a finished run directory or a checkpoint"
        )
    problem = safetensors_problem(path)  # a file cut short is the user's to fix, not a safetensors traceback
    if problem:
        raise damaged_weights_error(path, problem)
    load_trainable_state(module, load_file(str(path)), source=str(path))


def load_trainable_state(
    module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str = "memory"
) -> None:
    """Copy ``state`` into the module's trainable parameters; every name must match. A sharded (FSDP)
    parameter takes this process's shard of the value, a DeepSpeed-partitioned one its partition."""
    expected = {name for name, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = expected - state.keys(), state.keys() - expected
    if missing or unexpected:
        raise LoraplugError(
            f"The adapter weights in {source} do not fit this model: {len(missing)} missing, {len(unexpected)} unexpected "
            f"(e.g. {next(iter(missing or unexpected))})",
            fix="The recipe's model or adapter settings differ from the run that wrote them",
        )
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            target = params[name]
            if zero.is_partitioned(target):
                zero.set_full_value(target, tensor)
                continue
            target.copy_(shard_like(tensor.to(target.device, target.dtype), target))
