"""Sharded training (FSDP2 through accelerate): turning it on where accelerate would not, and reading
and writing the trainable state when every process holds only its shard of each parameter.

The user turns FSDP on as accelerate users do — ``accelerate launch --config_file fsdp.yaml`` with
``distributed_type: FSDP`` and ``fsdp_version: 2`` (accelerate sets ``ACCELERATE_USE_FSDP`` and the
``FSDP_*`` settings for the processes it starts). accelerate then wraps the model in
``accelerator.prepare``: ``fully_shard`` on each block and the root, so the frozen base and the LoRA
weights are both split across processes (each parameter becomes a ``DTensor`` holding one shard).

Under FSDP a parameter's full value exists on no process, so whatever reads or writes the trained
weights must be done by every process together: :func:`full_tensor` gathers one (a collective),
:func:`shard_like` cuts a full value into this process's shard (local, no communication), and the
optimizer's state goes through ``torch.distributed.checkpoint``'s full state dicts, keyed by parameter
name. Checkpoints and adapters on disk therefore hold the full trainable state, as under one process.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from loraplug.errors import LoraplugError
from loraplug.training import zero


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (``accelerate launch`` with an FSDP config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def use_fsdp_on_cpus(accelerator: Any) -> None:
    """Make FSDP requested for CPU processes (gloo) what it is on GPUs.

    accelerate 1.x selects FSDP only on accelerators: on CPUs its state stays ``MULTI_CPU`` and the
    model would be wrapped in DDP — replicated, not sharded — without a word. Its FSDP2 code path
    (``fully_shard``) works on a CPU mesh over gloo, so this selects it the way accelerate does on GPUs:
    the plugin read from the same ``FSDP_*`` settings, the state's distributed type set to FSDP.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if not fsdp_requested() or state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise LoraplugError(
            f"FSDP version {plugin.fsdp_version} was asked for on CPUs; loraplug shards on CPUs with FSDP2 only",
            where="the accelerate config's fsdp_config (FSDP_VERSION)",
            fix="Set `fsdp_version: 2` in the accelerate config's fsdp_config",
        )
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    # As accelerate's own FSDP set-up does: each later AcceleratorState() copies the partial state's type.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return bool(accelerator.distributed_type == DistributedType.FSDP)


def weights_partitioned(accelerator: Any) -> bool:
    """Whether no process holds every weight the forward pass uses (FSDP, DeepSpeed ZeRO-3), so that
    every forward pass is a collective of all processes."""
    return is_fsdp(accelerator) or zero.zero_stage(accelerator) >= 3


def refuse_main_process_model_calls(accelerator: Any, recipe: Any) -> None:
    """Samples during training and plugin metrics run the model on the main process alone; under FSDP
    and ZeRO-3 every forward pass is a collective of all processes, so they would wait forever. Say so
    up front."""
    if not weights_partitioned(accelerator):
        return
    engine = "FSDP" if is_fsdp(accelerator) else "DeepSpeed ZeRO-3"
    evaluation = recipe.eval
    if evaluation.sample_every_n_steps and evaluation.sample_prompts:
        key, why = "eval.sample_every_n_steps", "samples during training"
    elif evaluation.metrics:
        key, why = "eval.metrics", "plugin metrics"
    else:
        return
    raise LoraplugError(
        f"{why.capitalize()} run the model on the main process alone, which {engine} cannot do: every process "
        "holds one shard of each weight",
        where=key,
        fix=f"Remove {key} for {engine} runs (validation loss and the samples after training still work), or "
        "train with DDP (or ZeRO-2)",
    )


def is_sharded(tensor: torch.Tensor) -> bool:
    if not torch.distributed.is_available():  # builds without torch.distributed have no DTensor
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole value of ``tensor``: gathered from every process when it is sharded or partitioned by
    DeepSpeed (then every process must call this, in the same order), itself otherwise."""
    if zero.is_partitioned(tensor):
        return zero.full_value(tensor)
    if is_sharded(tensor):
        gathered: torch.Tensor = tensor.detach().full_tensor()  # type: ignore[attr-defined]
        return gathered
    return tensor.detach()


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a full tensor) as ``like`` holds it: this process's shard when ``like`` is sharded.
    Every process holds the whole value (read from the same file), so each cuts its own: no communication."""
    if not is_sharded(like):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)  # type: ignore[attr-defined]


def _inner(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def optimizer_state(module: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer's whole state: under FSDP and DeepSpeed gathered from every process and keyed by
    parameter name (every process must call this; the main process gets it all), else its own
    ``state_dict()``."""
    if any(zero.is_partitioned(p) for p in module.parameters()):
        return zero.optimizer_state(module, optimizer)
    if not any(is_sharded(p) for p in module.parameters()):
        state: dict[str, Any] = optimizer.state_dict()
        return state
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dict(get_optimizer_state_dict(module, _inner(optimizer), options=options))


def load_optimizer_state(module: torch.nn.Module, optimizer: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`optimizer_state` wrote, whichever engine wrote it (a checkpoint of one process
    or DDP is keyed by position, of FSDP or DeepSpeed by name: converted here); under FSDP and DeepSpeed
    each process keeps its shard of it."""
    names = names_in_order(module, optimizer)
    if any(zero.is_partitioned(p) for p in module.parameters()):
        zero.load_optimizer_state(module, optimizer, keyed_by_name(state, names))
        return
    if not any(is_sharded(p) for p in module.parameters()):
        optimizer.load_state_dict(keyed_by_position(state, names))
        return
    state = keyed_by_name(state, names)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        module, _inner(optimizer), optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
    )


def names_in_order(module: torch.nn.Module, optimizer: Any) -> list[list[str]]:
    """The names of the optimizer's parameters, group by group, in its order — the order a state dict
    keyed by position numbers them in. The same recipe builds the same groups in the same order under
    every engine (training/optim.py), which is what lets a checkpoint change engines."""
    name_of = {id(p): name for name, p in module.named_parameters()}
    if any(zero.is_partitioned(p) for p in module.parameters()):
        groups = zero.groups_of_model_params(optimizer)
    else:
        groups = [group["params"] for group in _inner(optimizer).param_groups]
    return [[name_of[id(p)] for p in group] for group in groups]


def _is_keyed_by_name(state: dict[str, Any]) -> bool:
    return any(isinstance(key, str) for group in state["param_groups"] for key in group["params"])


def keyed_by_name(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """An optimizer state dict keyed by parameter name (FSDP's and DeepSpeed's), converted from one keyed
    by position (one process's and DDP's) when needed."""
    if _is_keyed_by_name(state):
        return state
    positions, flat = _positions(state), [name for group in names for name in group]
    if len(positions) != len(flat):
        raise LoraplugError(
            f"The checkpoint's optimizer state holds {len(positions)} parameters; this run trains {len(flat)}",
            fix="Resume with the recipe (model and adapter settings) the run was started with",
        )
    return _rekeyed(state, dict(zip(positions, flat, strict=True)))


def keyed_by_position(state: dict[str, Any], names: list[list[str]]) -> dict[str, Any]:
    """An optimizer state dict keyed by position, as ``torch.optim.Optimizer.load_state_dict`` takes it,
    converted from one keyed by name when needed."""
    if not _is_keyed_by_name(state):
        return state
    flat = [name for group in names for name in group]
    if sorted(flat) != sorted(_positions(state)):
        raise LoraplugError(
            "The checkpoint's optimizer state names other parameters than this run trains",
            fix="Resume with the recipe (model and adapter settings) the run was started with",
        )
    return _rekeyed(state, {name: index for index, name in enumerate(flat)})


def _positions(state: dict[str, Any]) -> list[Any]:
    return [key for group in state["param_groups"] for key in group["params"]]


def _rekeyed(state: dict[str, Any], key_of: dict[Any, Any]) -> dict[str, Any]:
    return {
        "state": {key_of[key]: value for key, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [key_of[key] for key in group["params"]]} for group in state["param_groups"]
        ],
    }


def describe(module: torch.nn.Module) -> str | None:
    """How much of the model this process holds, under FSDP (``None`` when nothing is sharded)."""
    params = list(module.parameters())
    if not any(is_sharded(p) for p in params):
        return None

    def held(p: torch.Tensor) -> int:
        return int(p.to_local().numel()) if is_sharded(p) else p.numel()  # type: ignore[attr-defined]

    trained = [p for p in params if p.requires_grad]
    return (
        f"FSDP: this process holds {sum(map(held, params)):,} of the model's {sum(p.numel() for p in params):,} "
        f"parameter values ({sum(map(held, trained)):,} of the {sum(p.numel() for p in trained):,} trained)"
    )
