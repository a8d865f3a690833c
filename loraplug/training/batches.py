"""Which samples go into which micro-batch, on which process, in which epoch.

The order is a pure function of the seed, the epoch and the position in it, so two runs with the same
seed see the same batches, a resumed run continues with the batch it stopped at, and N processes
together see exactly the micro-batches one process would see with an N-times larger batch: each
global micro-batch is cut into one contiguous slice per process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from loraplug.bundles import Batch, PreparedData


def default_plan(num_samples: int, epoch: int, seed: int, global_batch: int) -> list[list[int]]:
    """A seeded shuffle cut into global micro-batches; the last one is topped up from the epoch's start.

    Topping up (as ``DistributedSampler`` does) keeps every micro-batch full, so each process always
    gets a slice and 1 and N processes see the same samples.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_samples, generator=generator).tolist()
    count = math.ceil(num_samples / global_batch)
    padded = (
        order + order[: count * global_batch - num_samples]
        if num_samples >= global_batch
        else (order * global_batch)[: count * global_batch]
    )
    return [padded[i * global_batch : (i + 1) * global_batch] for i in range(count)]


def weighted_plan(weights: Sequence[float], epoch: int, seed: int, global_batch: int) -> list[list[int]]:
    """As many draws as the epoch has samples, with replacement, in proportion to ``weights``.

    The draws depend only on the seed and the epoch, so every process computes the same plan and takes
    its slice of each global micro-batch, exactly as with :func:`default_plan`.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    count = math.ceil(len(weights) / global_batch)
    probabilities = torch.tensor(weights, dtype=torch.float64)
    draws = torch.multinomial(
        probabilities, count * global_batch, replacement=True, generator=generator
    ).tolist()
    return [draws[i * global_batch : (i + 1) * global_batch] for i in range(count)]


@dataclass(frozen=True)
class Position:
    """Where in the data a run is: the epoch and the index of the next global micro-batch in it."""

    epoch: int = 0
    index: int = 0


class MicroBatches:
    """This process's micro-batches, epoch after epoch, starting anywhere."""

    def __init__(
        self, prepared: PreparedData, *, batch_size: int, seed: int, rank: int, world: int, num_workers: int
    ) -> None:
        self.prepared = prepared
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.num_workers = num_workers
        self.sized = isinstance(prepared.train, Sequence)

    def plan(self, epoch: int) -> list[list[int]]:
        assert isinstance(self.prepared.train, Sequence)  # noqa: S101
        global_batch = self.batch_size * self.world
        if self.prepared.plan_batches is not None:
            return self.prepared.plan_batches(epoch, self.seed, global_batch)
        if self.prepared.sample_weights is not None:
            return weighted_plan(self.prepared.sample_weights, epoch, self.seed, global_batch)
        return default_plan(len(self.prepared.train), epoch, self.seed, global_batch)

    def per_epoch(self) -> int | None:
        return len(self.plan(0)) if self.sized else None

    def _slice(self, global_batch: list[int]) -> list[int]:
        per_rank = math.ceil(len(global_batch) / self.world)
        return global_batch[self.rank * per_rank : (self.rank + 1) * per_rank]

    def iterate(self, start: Position = Position()) -> Iterator[tuple[Position, Batch]]:
        """Yield ``(position after this batch, batch)`` forever; the caller stops it."""
        epoch, index = start.epoch, start.index
        while True:
            # The loader gets a generator of its own: creating its iterator would otherwise draw from
            # the global RNG, shifting dropout masks after a resume.
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if self.sized:
                plan = self.plan(epoch)[index:]
                slices = [self._slice(b) for b in plan]
                loader: Any = DataLoader(
                    self.prepared.train,  # type: ignore[arg-type]
                    batch_sampler=slices,
                    collate_fn=self.prepared.collate,
                    num_workers=self.num_workers,
                    generator=generator,
                )
            else:
                loader = DataLoader(
                    self.prepared.train,  # type: ignore[arg-type]
                    batch_size=self.batch_size,
                    collate_fn=self.prepared.collate,
                    num_workers=self.num_workers,
                    generator=generator,
                )
            skip = 0 if self.sized else index
            yielded = False
            for batch in loader:
                if skip:
                    skip -= 1
                    continue
                index += 1
                yielded = True
                yield Position(epoch, index), batch
            if not yielded and not self.sized and index == 0:
                return  # an empty stream: the caller reports it
            epoch, index = epoch + 1, 0


def eval_batches(
    prepared: PreparedData, *, batch_size: int, rank: int, world: int, limit: int | None
) -> Iterator[Batch]:
    """This process's share of the validation set, in order. Every process gets as many batches: one
    whose share of the last global batch is empty gets a stand-in (its last sample, with no targets
    counted), because under FSDP each forward pass is a collective every process must join."""
    val = prepared.val or []
    global_batch = batch_size * world
    count = math.ceil(len(val) / global_batch)
    if limit is not None:
        count = min(count, limit)
    for i in range(count):
        chunk = list(range(i * global_batch, min(len(val), (i + 1) * global_batch)))
        per_rank = math.ceil(len(chunk) / world)
        mine = chunk[rank * per_rank : (rank + 1) * per_rank]
        if mine:
            yield prepared.collate([val[j] for j in mine])
        else:
            yield replace(prepared.collate([val[chunk[-1]]]), num_targets=0, num_tokens=0)


def move_to(batch: Batch, device: torch.device) -> Batch:
    inputs = {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.inputs.items()
    }
    return Batch(
        inputs=inputs, num_targets=batch.num_targets, num_tokens=batch.num_tokens, sample_ids=batch.sample_ids
    )
