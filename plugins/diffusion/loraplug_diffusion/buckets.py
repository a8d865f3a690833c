"""Aspect-ratio buckets, and a batch plan in which every micro-batch comes from one bucket.

A bucket is a ``(width, height)`` of about ``resolution²`` pixels with sides a multiple of ``step`` (kohya's
scheme). Each image goes to the bucket nearest its aspect ratio and is resized to cover it, then
cropped — so a portrait stays a portrait instead of losing its top and bottom to a square crop.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def bucket_sizes(resolution: int, step: int) -> list[tuple[int, int]]:
    """Every ``(width, height)`` with sides multiples of ``step``, area at most ``resolution²``, aspect up to 4:1."""
    area = resolution * resolution
    sizes = {(resolution, resolution)}
    side = step
    while side <= resolution * 2:
        other = min(resolution * 2, (area // side) // step * step)
        if other >= step and max(side, other) <= 4 * min(side, other):
            sizes.add((side, other))
            sizes.add((other, side))
        side += step
    return sorted(sizes)


def nearest_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to ``size``'s (in log space; ties go to the larger area)."""
    ratio = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


def plan_by_bucket(
    keys: Sequence[tuple[int, int]], epoch: int, seed: int, global_batch: int
) -> list[list[int]]:
    """One epoch of global micro-batches, each from a single bucket.

    Each bucket's samples are shuffled and cut into batches; a bucket's last batch is topped up from its
    own start (smaller buckets repeat their samples), so every batch is full and same-sized, as the core's
    default plan does. The batches are then shuffled, so buckets interleave.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    groups: dict[tuple[int, int], list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    batches: list[list[int]] = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        count = math.ceil(len(members) / global_batch)
        padded = (members * math.ceil(count * global_batch / len(members)))[: count * global_batch]
        batches.extend(padded[i * global_batch : (i + 1) * global_batch] for i in range(count))
    rng.shuffle(batches)
    return batches
