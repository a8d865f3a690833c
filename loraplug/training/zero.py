"""DeepSpeed ZeRO through accelerate: turning it on where accelerate would not (CPUs), fitting its
engine to the recipe, and reading and writing the trainable state it partitions.

The user turns it on as accelerate users do — ``accelerate launch --config_file zero.yaml`` with
``distributed_type: DEEPSPEED`` and a ``deepspeed_config`` (``zero_stage: 2`` or ``3``). accelerate's
``prepare`` then hands the model and optimizer to ``deepspeed.initialize``:

* ZeRO-2 partitions the optimizer state and the fp32 master weights of the trained (LoRA) parameters
  across processes; every process still holds every weight it computes with.
* ZeRO-3 partitions the weights too, frozen base included: a forward pass gathers each layer's
  weights from all processes, so every forward is a collective.

Under either, the trained values and their optimizer state exist whole on no process, so reading and
writing them are collectives every process takes part in, in the same order: DeepSpeed's
``safe_get_full_fp32_param`` / ``safe_get_full_optimizer_state`` gather one parameter's value or state,
and the ``safe_set_…`` twins cut a full value into this process's partition. Checkpoints and adapters
on disk therefore hold the full trainable state, keyed by parameter name (as under FSDP), and are the
files a one-process run writes. DeepSpeed's own ``save_checkpoint`` is not used: it pickles.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import torch

from loraplug.errors import LoraplugError


def deepspeed_requested() -> bool:
    """Whether the launcher asked for DeepSpeed (``accelerate launch`` with a DeepSpeed config sets this)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def select_cpu_accelerator() -> None:
    """Before accelerate starts: DeepSpeed, when asked for, must be installed (else accelerate fails with
    an ImportError of its own), and it picks its "accelerator" (device and communication backend) when
    first imported; with no CUDA it must be told to use the CPU one, whose backend is gloo unless
    Intel's oneCCL is installed."""
    if not deepspeed_requested():
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise LoraplugError(
            f"DeepSpeed was asked for (the accelerate config's distributed_type: DEEPSPEED) but cannot be imported ({exc})",
            where="the accelerate config (ACCELERATE_USE_DEEPSPEED)",
            fix='pip install "loraplug[deepspeed]" (docs/distributed.md), or shard with FSDP instead',
        ) from None


def use_deepspeed_on_cpus(accelerator: Any, mixed_precision: str) -> None:
    """Make DeepSpeed requested for CPU processes (gloo) what it is on GPUs.

    accelerate 1.x selects DeepSpeed only on accelerators: on CPUs its state stays ``MULTI_CPU`` and the
    model would be wrapped in DDP without a word. DeepSpeed runs on CPUs (its CPU accelerator), so this
    selects it the way accelerate does on GPUs: the plugin accelerate read from the ``DEEPSPEED_*``
    settings, made active, and the state's distributed type set to DeepSpeed.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    state = accelerator.state
    if not deepspeed_requested() or state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision(mixed_precision)
    plugin.select(_from_accelerator_state=True)
    state.distributed_type = DistributedType.DEEPSPEED
    state.deepspeed_plugins = plugin
    # As accelerate's own DeepSpeed set-up does: each later AcceleratorState() copies the partial state's type.
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED


def build_models_whole(accelerator: Any) -> None:
    """Models are built whole on every process and partitioned by ``prepare``, also under ZeRO-3.

    accelerate hands the DeepSpeed config to transformers (a weak reference its ``from_pretrained``
    reads), and with ZeRO-3 in it transformers builds every model inside ``deepspeed.zero.Init``,
    partitioned from the start (``zero3_init_flag`` or not). loraplug runs the model on the main
    process before training (the packing check, the samples before training) and builds it again on
    the main process after (samples, exports): a model partitioned outside the engine cannot run there.
    Dropping the plugin's reference (the only strong one) turns that off. The cost: each process holds
    the whole base in memory until ``prepare`` partitions it (docs/distributed.md)."""
    if is_deepspeed(accelerator):
        accelerator.state.deepspeed_plugin.dschf = None


def is_deepspeed(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return bool(accelerator.distributed_type == DistributedType.DEEPSPEED)


def zero_stage(accelerator: Any) -> int:
    """The ZeRO stage of a DeepSpeed run (0 when not under DeepSpeed)."""
    if not is_deepspeed(accelerator):
        return 0
    return int(
        accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
    )


def fit_engine_to_recipe(
    accelerator: Any, *, micro_batch_size: int, grad_accum_steps: int, max_grad_norm: float
) -> list[str]:
    """Set the DeepSpeed config from the recipe, before ``prepare``; return a note for each value of the
    accelerate config it overrode (the recipe decides, as it does for ``train.mixed_precision``).

    loraplug's loop owns accumulation: it counts the whole step's targets before any backward pass and
    divides each micro-batch's summed loss by that count (docs/training.md), so the engine must neither
    divide the loss by its accumulation steps nor decide where a step ends. DeepSpeed's unmanaged mode
    (``managed_gradient_accumulation: false``) does exactly that: ``backward`` only accumulates, and
    ``step()`` — called once per optimizer step — reduces, clips and updates.
    """
    plugin = accelerator.state.deepspeed_plugin
    config: dict[str, Any] = plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": (micro_batch_size, "train.batch_size"),
        "gradient_accumulation_steps": (grad_accum_steps, "train.grad_accum_steps"),
        "gradient_clipping": (max_grad_norm, "train.max_grad_norm"),
    }
    notes = []
    if plugin.zero3_init_flag:
        notes.append(
            "DeepSpeed: zero3_init_flag is not used; each process builds the whole model and prepare partitions it"
        )
    for key, (value, recipe_key) in wanted.items():
        given = config.get(key, "auto")
        if given != "auto" and float(given) != float(value):
            notes.append(
                f"DeepSpeed: the recipe's {recipe_key} = {value} replaces the accelerate config's {key} = {given}"
            )
        config[key] = value
    accelerator.gradient_accumulation_steps = grad_accum_steps  # else accelerate warns of a mismatch
    config["train_batch_size"] = micro_batch_size * grad_accum_steps * accelerator.num_processes
    config["managed_gradient_accumulation"] = False
    # accelerate would gather a ZeRO-3 model on every save of its own; loraplug gathers only the trained weights.
    config.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = False
    return notes


# -- the partitioned parameters ------------------------------------------------------------------------


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether DeepSpeed's ZeRO optimizer holds this parameter's master value in partitions.

    Decided by the attribute's presence, not its value: a ZeRO-2 parameter that lies wholly in another
    process's partition has ``_hp_mapping = None`` here, yet this process must still join the gather."""
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def full_value(param: torch.Tensor) -> torch.Tensor:
    """The whole fp32 master value of a partitioned parameter, gathered from every process (a collective:
    every process must call this, in the same order). Under bf16 this is the value the optimizer updates,
    not the rounded copy the forward pass uses."""
    from deepspeed.utils import safe_get_full_fp32_param

    value: torch.Tensor = safe_get_full_fp32_param(param)
    return value.detach().reshape(_shape(param))


def set_full_value(param: torch.Tensor, value: torch.Tensor) -> None:
    """Give a partitioned parameter the whole ``value``: this process's partition of the fp32 master
    copy, and the weight the forward pass uses. Every process holds the value (read from the same file);
    under ZeRO-3 the forward weight is itself partitioned, so it is gathered, set and partitioned again
    (a collective)."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param

    safe_set_full_fp32_param(param, value.to(torch.float32).reshape(_shape(param)))
    with (
        deepspeed.zero.GatheredParameters([param], modifier_rank=0)
        if hasattr(param, "ds_id")
        else nullcontext()
    ):
        param.data.copy_(value.to(param.device, param.dtype).reshape(param.data.shape))


def _shape(param: torch.Tensor) -> torch.Size:
    return param.ds_shape if hasattr(param, "ds_id") else param.shape  # type: ignore[attr-defined]


def _numel(param: torch.Tensor) -> int:
    return int(param.ds_numel) if hasattr(param, "ds_id") else param.numel()  # type: ignore[attr-defined]


# -- the optimizer state -------------------------------------------------------------------------------


def _base_optimizer(optimizer: Any) -> Any:
    """The user's optimizer inside accelerate's wrapper and DeepSpeed's ZeRO optimizer: its state is
    keyed by the flat fp32 partitions the ZeRO optimizer gave it."""
    zero_optimizer = getattr(optimizer, "optimizer", optimizer)
    return zero_optimizer.optimizer


def partitions(optimizer: Any) -> list[torch.Tensor]:
    """This process's flat fp32 partitions, the keys of the base optimizer's state. ZeRO-3 lends them to
    the base optimizer's groups only while it steps; ZeRO-1/2 leave them there."""
    zero_optimizer = getattr(optimizer, "optimizer", optimizer)
    flats = getattr(zero_optimizer, "fp32_partitioned_groups_flat", None)
    if flats is None:
        flats = zero_optimizer.single_partition_of_fp32_groups
    return list(flats)


def _per_parameter(value: Any, flat: torch.Tensor) -> bool:
    """Whether a state entry holds one value per element of the partition (AdamW's moments), rather than
    one for the whole group (its step count)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.numel() == flat.numel()


def optimizer_state(module: torch.nn.Module, optimizer: Any) -> dict[str, Any]:
    """The optimizer's whole state as ``torch.distributed.checkpoint`` writes FSDP's: ``state`` keyed by
    parameter name, ``param_groups`` naming their parameters (every process must call this)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    base = _base_optimizer(optimizer)
    flats = partitions(optimizer)
    template = base.state.get(flats[0], {}) if flats else {}
    for key, value in template.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and not _per_parameter(value, flats[0]):
            raise LoraplugError(
                f"The optimizer keeps its state {key!r} in a shape DeepSpeed cannot split per parameter",
                where="[optimizer] kind",
                fix="Use an element-wise optimizer (adamw, lion) with DeepSpeed, or shard with FSDP",
            )
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    state: dict[str, dict[str, Any]] = {}
    for name, param in named:
        entry: dict[str, Any] = {}
        for key, value in template.items():
            if _per_parameter(value, flats[0]):
                full = safe_get_full_optimizer_state(param, key)
                entry[key] = full.detach().reshape(_shape(param)).to("cpu", copy=True)
            else:
                entry[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value
        state[name] = entry
    names_by_id = {id(p): name for name, p in named}
    groups = []
    for group, params in zip(base.param_groups, groups_of_model_params(optimizer), strict=True):
        hyper = {k: v for k, v in group.items() if k != "params"}
        groups.append({**hyper, "params": [names_by_id[id(p)] for p in params]})
    return {"state": state if template else {}, "param_groups": groups}


def groups_of_model_params(optimizer: Any) -> list[list[torch.Tensor]]:
    """The model parameters of each of the optimizer's groups. ZeRO-1/2 keep one list per group;
    ZeRO-3 splits a group into sub-groups (``sub_group_size``) and says which group each belongs to."""
    zero_optimizer = getattr(optimizer, "optimizer", optimizer)
    sub_groups = getattr(zero_optimizer, "fp16_groups", None)
    group_of = getattr(zero_optimizer, "sub_group_to_group_id", None)
    if sub_groups is None or group_of is None:
        return [list(group) for group in zero_optimizer.bit16_groups]
    groups: list[list[torch.Tensor]] = [[] for _ in _base_optimizer(optimizer).param_groups]
    for index, params in enumerate(sub_groups):
        groups[group_of[index]].extend(params)
    return groups


def load_optimizer_state(module: torch.nn.Module, optimizer: Any, saved: dict[str, Any]) -> None:
    """Restore what :func:`optimizer_state` wrote: each process keeps its partition of every state."""
    from deepspeed.utils import safe_set_full_optimizer_state

    base = _base_optimizer(optimizer)
    for group, saved_group in zip(base.param_groups, saved["param_groups"], strict=True):
        group.update({k: v for k, v in saved_group.items() if k != "params"})
    state: dict[str, dict[str, Any]] = saved["state"]
    if not state:
        return
    template = next(iter(state.values()))
    per_parameter = {
        key for key, value in template.items() if isinstance(value, torch.Tensor) and value.dim() > 0
    }
    # The base optimizer builds its state on its first step; a resumed run has not stepped yet, so the
    # entries are made here (zeros, then each process's partition of the saved values written into them).
    for flat in partitions(optimizer):
        entry = base.state.setdefault(flat, {})
        for key, value in template.items():
            if key in per_parameter:
                entry.setdefault(key, torch.zeros_like(flat))
            else:
                entry[key] = value.clone() if isinstance(value, torch.Tensor) else value
    # ZeRO-1/2 point each parameter at its fragment of that state when the optimizer first steps; the
    # entries made above must be linked now, before the values are written through those fragments.
    link = getattr(getattr(optimizer, "optimizer", optimizer), "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        for key in per_parameter:
            safe_set_full_optimizer_state(param, state[name][key].to(torch.float32), key)


def describe(module: torch.nn.Module, accelerator: Any) -> str | None:
    """What ZeRO partitions on this process, under DeepSpeed (``None`` otherwise)."""
    if not is_deepspeed(accelerator):
        return None
    params = list(module.parameters())
    stage = zero_stage(accelerator)
    trained = sum(_numel(p) for p in params if p.requires_grad)
    if stage >= 3:
        held = sum(int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else p.numel() for p in params)
        return (
            f"DeepSpeed ZeRO-3: this process holds {held:,} of the model's {sum(map(_numel, params)):,} parameter "
            f"values and a 1/{accelerator.num_processes} partition of the {trained:,} trained ones' optimizer state"
        )
    return (
        f"DeepSpeed ZeRO-{stage}: every process holds the model's {sum(map(_numel, params)):,} parameter values; "
        f"the optimizer state of the {trained:,} trained ones is split in {accelerator.num_processes} partitions"
    )
