"""How one optimizer step's gradients are made and applied: the part of the loop that differs between
accelerate's own wrappers (one process, DDP, FSDP) and DeepSpeed's engine.

The loop is the same for both (loop.py): for each micro-batch, :meth:`Stepper.backward` inside
:meth:`Stepper.accumulating`; then :meth:`Stepper.apply` (clip, update, clear) or, for a NaN loss,
:meth:`Stepper.discard`. Each loss handed to ``backward`` is already scaled by the whole step's
target count, so neither strategy may divide it again.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import torch

from loraplug.errors import LoraplugError


class Stepper(Protocol):
    def accumulating(self, last: bool) -> AbstractContextManager[Any]:
        """The context of one micro-batch's forward and backward; ``last`` is the step's last one."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def apply(self) -> None:
        """Clip the accumulated gradients, update the weights, clear the gradients."""

    def discard(self) -> None:
        """Drop the accumulated gradients without an update (a NaN or infinite loss)."""


class AccelerateStepper:
    """accelerate's wrappers (one process, DDP, FSDP): DDP synchronises gradients on the last
    micro-batch only (``no_sync`` before it); ``apply`` clips with accelerate (which knows FSDP's
    sharded norms and the fp16 loss scaler), steps and clears."""

    def __init__(self, accelerator: Any, module: Any, optimizer: Any, max_grad_norm: float) -> None:
        self.accelerator, self.module, self.optimizer = accelerator, module, optimizer
        self.max_grad_norm = max_grad_norm
        self.trainable = [p for p in module.parameters() if p.requires_grad]

    def accumulating(self, last: bool) -> AbstractContextManager[Any]:
        return nullcontext() if last else self.accelerator.no_sync(self.module)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def apply(self) -> None:
        if self.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(self.trainable, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def discard(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)


class DeepSpeedStepper:
    """DeepSpeed's engine in its unmanaged accumulation mode (zero.fit_engine_to_recipe): ``backward``
    accumulates (ZeRO-2/3 reduce each micro-batch's gradients into the partitions as they go),
    ``step()`` is the step's boundary — it clips with the recipe's ``max_grad_norm``, updates and clears.

    accelerate's ``backward`` is not used: under DeepSpeed it also calls ``engine.step()`` and lets the
    engine divide the loss by its accumulation steps, both of which the loop does itself."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def accumulating(self, last: bool) -> AbstractContextManager[Any]:
        return nullcontext()  # ZeRO-2/3 reduce as they go; there is nothing to postpone

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def apply(self) -> None:
        self.engine.step()

    def discard(self) -> None:
        """Clear what ``backward`` accumulated, as DeepSpeed's ZeRO optimizers clean up after an fp16
        overflow (the one skipped step they know): the parameters' gradients and the partitions the
        reduced gradients were gathered into, so the next step starts from none. DeepSpeed has no public
        call for it, so this names its internals (deepspeed 0.19); tests/test_deepspeed.py checks that a
        skipped step leaves the run equal to one process skipping the same step."""
        zero_optimizer = self.engine.optimizer
        if not hasattr(zero_optimizer, "averaged_gradients"):  # a DeepSpeed whose internals moved on
            import deepspeed

            raise LoraplugError(
                f"A NaN or infinite loss cannot be skipped under DeepSpeed {deepspeed.__version__}: loraplug does not "
                f"know where its {type(zero_optimizer).__name__} keeps the gradients it accumulated",
                where="train.on_nan",
                fix='Set train.on_nan = "stop", or install the DeepSpeed version loraplug is tested with (deepspeed>=0.19.8,<0.20)',
            )
        zero_optimizer.zero_grad(set_to_none=True)  # ZeRO-3: also the next backward overwrites, not adds
        release = getattr(zero_optimizer, "_release_preflattened_grad_buffers", None)
        if release is not None:
            release()
        if getattr(zero_optimizer, "cpu_offload", False) or getattr(
            zero_optimizer, "offload_optimizer", False
        ):
            zero_optimizer.reset_cpu_buffers()
            if hasattr(zero_optimizer, "_offload_accumulated_param_ids"):
                zero_optimizer._offload_accumulated_param_ids = set()
        for name in ("averaged_gradients", "all_grad_tensors"):  # ZeRO-1/2: summed over micro-batches
            buffers = getattr(zero_optimizer, name, None)
            if isinstance(buffers, dict):
                for group in buffers:
                    buffers[group] = None
        if hasattr(zero_optimizer, "all_grad_tensors"):  # ZeRO-1/2 count micro-batches from here after a step
            from deepspeed.runtime.zero.stage_1_and_2 import INITIAL_MICRO_STEP_ID

            zero_optimizer.micro_step_id = INITIAL_MICRO_STEP_ID
