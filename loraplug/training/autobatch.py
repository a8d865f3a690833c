"""``batch_size = "auto"``: the largest micro-batch that fits, with the effective batch kept exactly.

The candidates are the divisors of the effective batch ``E`` (``train.effective_batch_size``), so
``micro-batch × grad_accum_steps = E`` exactly and accumulation keeps the update of one batch of ``E``.
Each candidate is measured, not guessed: one forward and backward of a worst-case micro-batch — the
longest training item repeated — under the run's precision, its peak memory compared with the budget:

* CUDA: ``memory_fraction`` × the device's total memory, against ``torch.cuda.max_memory_allocated``
  (weights included);
* CPU: ``memory_fraction`` × the RAM available when the search starts, against the growth of the
  process's resident memory during the step (freed heap memory is first returned to the system with
  glibc's ``malloc_trim``, so the growth is the step's own).

The AdamW state the step will add (two float32 values per trainable parameter) is counted too. The
search probes the two smallest candidates, extrapolates linearly to the largest candidate predicted to
fit, measures it, and steps down until one fits — so a probe far over the budget never runs. Random
number generators are restored afterwards: a run with ``"auto"`` trains exactly like one given the
chosen numbers.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import torch

from loraplug.bundles import Batch, ModelBundle, PreparedData
from loraplug.context import RunContext
from loraplug.errors import LoraplugError
from loraplug.recipe.model import Recipe
from loraplug.status import RunStatus
from loraplug.training.batches import move_to

GIB = 1024**3
#: Items scanned for the longest one when the training data is a stream.
STREAM_SCAN = 256


@dataclass
class Probe:
    """One measured micro-batch size: its peak bytes, or ``None`` when it ran out of memory."""

    size: int
    peak: int | None


@dataclass
class Choice:
    """What the search chose, and the measurements behind it."""

    batch_size: int
    grad_accum_steps: int
    budget: int
    probes: list[Probe]
    items: int
    next_size: int | None = None
    next_peak: int | None = None
    next_predicted: bool = False


def divisors(number: int, limit: int) -> list[int]:
    """The divisors of ``number`` up to ``limit``, ascending."""
    return [d for d in range(1, min(number, limit) + 1) if number % d == 0]


def search(
    candidates: Sequence[int], measure: Callable[[int], int | None], budget: int
) -> tuple[int | None, list[Probe], int | None, bool]:
    """The largest candidate whose measured peak is within ``budget`` (``None`` if not even the smallest).

    Returns ``(chosen, probes, peak of the next larger candidate, whether that peak is predicted)``.
    Peaks are assumed to grow with the size, so a size above a failing one is never measured.
    """
    probes: list[Probe] = []

    def fits(size: int) -> bool:
        probe = next((p for p in probes if p.size == size), None)
        if probe is None:
            probe = Probe(size, measure(size))
            probes.append(probe)
        return probe.peak is not None and probe.peak <= budget

    if not candidates or not fits(candidates[0]):
        return None, probes, None, False
    if len(candidates) == 1:
        return candidates[0], probes, None, False
    if not fits(candidates[1]):
        return candidates[0], probes, _peak(probes, candidates[1]), False
    # Linear in the size: peak(m) ≈ fixed + per_item × m, from the two smallest measurements.
    (small, small_peak), (large, large_peak) = ((p.size, p.peak or 0) for p in probes[:2])
    per_item = max(0.0, (large_peak - small_peak) / (large - small))

    def predicted(size: int) -> float:
        return large_peak + per_item * (size - large)

    index = max(i for i, c in enumerate(candidates) if i == 1 or predicted(c) <= budget)
    while index > 1 and not fits(candidates[index]):
        index -= 1
    chosen = candidates[index]
    if index + 1 < len(candidates):
        following = candidates[index + 1]
        measured = _peak(probes, following)
        if measured is not None or any(p.size == following for p in probes):
            return chosen, probes, measured, False
        return chosen, probes, int(predicted(following)), True
    return chosen, probes, None, False


def _peak(probes: list[Probe], size: int) -> int | None:
    return next((p.peak for p in probes if p.size == size), None)


class _ResidentPeak(AbstractContextManager["_ResidentPeak"]):
    """The growth of this process's resident memory while the block runs, sampled every millisecond."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.stop = threading.Event()
        self.top = 0

    def sample(self) -> None:
        self.top = max(self.top, self.process.memory_info().rss)

    def _watch(self) -> None:
        while not self.stop.wait(0.001):
            self.sample()

    def __enter__(self) -> _ResidentPeak:
        _return_free_heap()
        self.base = self.process.memory_info().rss
        self.top = self.base
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sample()

    @property
    def growth(self) -> int:
        return self.top - self.base


def _return_free_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is only less tight
        pass


def _longest(prepared: PreparedData) -> Any:
    items = (
        prepared.train if isinstance(prepared.train, Sequence) else list(islice(prepared.train, STREAM_SCAN))
    )
    if not items:
        raise LoraplugError(
            "The training data has no samples to size the batch with", fix="Check the data source"
        )
    return max(items, key=lambda item: prepared.collate([item]).num_tokens)


def _is_out_of_memory(exc: BaseException) -> bool:
    return (
        isinstance(exc, torch.cuda.OutOfMemoryError)
        or "can't allocate memory" in str(exc)
        or "out of memory" in str(exc)
    )


def choose(
    recipe: Recipe,
    model: ModelBundle,
    prepared: PreparedData,
    step_fn: Callable[..., Any],
    accelerator: Any,
    ctx: RunContext,
) -> Choice:
    """Measure candidates on this device; see the module's docstring."""
    import psutil

    cfg = recipe.train
    device = accelerator.device
    module = model.module.to(device)
    cuda = device.type == "cuda"
    optimizer_state: int = sum(p.numel() * 8 for p in module.parameters() if p.requires_grad)
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        budget = int(cfg.memory_fraction * total)
    else:
        budget = int(cfg.memory_fraction * psutil.virtual_memory().available)
    worst = _longest(prepared)
    items = len(prepared.train) if isinstance(prepared.train, Sequence) else cfg.auto_target

    def measure(size: int) -> int | None:
        batch: Batch = move_to(prepared.collate([worst] * size), device)
        module.zero_grad(set_to_none=True)
        try:
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                with accelerator.autocast():
                    out = step_fn(model=model, module=module, batch=batch, ctx=ctx)
                out.loss_sum.backward()
                return torch.cuda.max_memory_allocated(device) + optimizer_state
            with _ResidentPeak() as watch:
                with accelerator.autocast():
                    out = step_fn(model=model, module=module, batch=batch, ctx=ctx)
                watch.sample()  # activations are alive now: the peak is at least this
                out.loss_sum.backward()
            return watch.growth + optimizer_state
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not _is_out_of_memory(exc):
                raise
            return None
        finally:
            module.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.empty_cache()

    was_training = module.training
    module.train()
    with torch.random.fork_rng(devices=[device] if cuda else []):
        chosen, probes, next_peak, predicted = search(
            divisors(cfg.auto_target, max(1, items)), measure, budget
        )
    module.train(was_training)
    if chosen is None:
        peak = probes[0].peak
        need = "more than the device has" if peak is None else size_text(peak)
        raise LoraplugError(
            f'batch_size = "auto": even a micro-batch of 1 needs {need}, over the budget of {size_text(budget)} '
            f"(train.memory_fraction = {cfg.memory_fraction} of {'CUDA memory' if cuda else 'the available RAM'})",
            where="train.batch_size",
            fix="Raise train.memory_fraction, lower model.max_length, or turn on model.gradient_checkpointing",
        )
    bigger = [c for c in divisors(cfg.auto_target, max(1, items)) if c > chosen]
    choice = Choice(
        chosen,
        cfg.auto_target // chosen,
        budget,
        probes,
        items,
        bigger[0] if bigger else None,
        next_peak,
        predicted,
    )
    if accelerator.num_processes > 1:  # every process must cut the same micro-batches
        smallest = int(accelerator.gather(torch.tensor([chosen], device=device)).min())
        choice = replace(choice, batch_size=smallest, grad_accum_steps=cfg.auto_target // smallest)
    return choice


def size_text(count: int) -> str:
    return f"{count / GIB:.2f} GiB" if count >= GIB else f"{count / 1024**2:.0f} MiB"


def explain(choice: Choice, recipe: Recipe, device: Any) -> str:
    """One paragraph: what was chosen and why."""
    cfg = recipe.train
    where = "CUDA memory" if device.type == "cuda" else "the RAM available at start"
    measured = next(p.peak for p in choice.probes if p.size == choice.batch_size) or 0
    text = (
        f"batch_size auto: {choice.batch_size} × {choice.grad_accum_steps} accumulation = {cfg.auto_target} per step; "
        f"a micro-batch of {choice.batch_size} worst-case items peaks at {size_text(measured)} of a "
        f"{size_text(choice.budget)} budget ({cfg.memory_fraction:g} × {where})"
    )
    if choice.next_size is None:
        if choice.batch_size == cfg.auto_target:
            return text + ": the whole effective batch fits"
        return (
            text + f"; the next divisor of {cfg.auto_target} is more than the {choice.items} training items"
        )
    if choice.next_peak is None:
        return text + f"; {choice.next_size} ran out of memory"
    verb = "would need about" if choice.next_predicted else "needed"
    return text + f"; {choice.next_size} {verb} {size_text(choice.next_peak)}"


def resolve_batch_size(
    recipe: Recipe,
    model: ModelBundle,
    prepared: PreparedData,
    step_fn: Callable[..., Any],
    accelerator: Any,
    ctx: RunContext,
    *,
    previous: dict[str, Any] | None = None,
) -> Recipe:
    """``recipe`` as the loop should run it: unchanged, or with ``batch_size = "auto"`` replaced by numbers.

    :param previous: the choice a resumed run made when it started (``run.json``'s ``auto_batch``);
        it is reused, because the data position in a checkpoint is only valid for the same batch.
    """
    if recipe.train.batch_size != "auto":
        return recipe
    if previous is not None:
        ctx.info(
            f"batch size: {previous['batch_size']} × {previous['grad_accum_steps']} accumulation, as chosen when the run started"
        )
        train = recipe.train.model_copy(
            update={"batch_size": previous["batch_size"], "grad_accum_steps": previous["grad_accum_steps"]}
        )
        return replace(recipe, train=train)
    choice = choose(recipe, model, prepared, step_fn, accelerator, ctx)
    ctx.info(explain(choice, recipe, accelerator.device))
    if ctx.is_main_process:
        RunStatus.update(
            ctx.run_dir,
            auto_batch={
                "batch_size": choice.batch_size,
                "grad_accum_steps": choice.grad_accum_steps,
                "budget_bytes": choice.budget,
                "probes": {str(p.size): p.peak for p in choice.probes},
            },
        )
    train = recipe.train.model_copy(
        update={"batch_size": choice.batch_size, "grad_accum_steps": choice.grad_accum_steps}
    )
    return replace(recipe, train=train)
