"""Caption augmentation: dropout to the empty caption, and tag shuffling with leading tags kept."""

from __future__ import annotations

import random


def shuffle_tags(caption: str, keep: int, rng: random.Random) -> str:
    """Shuffle the comma-separated tags of ``caption`` after the first ``keep`` (a trigger word stays first)."""
    tags = [t.strip() for t in caption.split(",")]
    tags = [t for t in tags if t]
    head, tail = tags[:keep], tags[keep:]
    rng.shuffle(tail)
    return ", ".join(head + tail)


def augment(caption: str, *, dropout: float, shuffle: bool, keep: int, rng: random.Random) -> str:
    """The caption a training step sees."""
    if dropout and rng.random() < dropout:
        return ""
    if shuffle:
        return shuffle_tags(caption, keep, rng)
    return caption
