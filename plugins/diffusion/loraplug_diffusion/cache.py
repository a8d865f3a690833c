"""Cached VAE latents and text-encoder outputs, in memory or on disk, keyed so a stale entry is never used.

A latent's key is the VAE's fingerprint (a hash of its config and weights), the image's content hash,
the version of the image decoding, and the size and crop it was encoded at; a text encoding's key is the text encoder's fingerprint and
the caption. On disk each entry is one safetensors file under the cache directory, written atomically,
so a later run with the same images, model and resolution reuses it (like kohya's ``_WxH.npz``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from loraplug.toolkit import atomic_write_bytes, sha256_file


def fingerprint(model: torch.nn.Module, config: Any) -> str:
    """A short hash of a model's config and weights (sampled: first, middle and last tensor)."""
    digest = hashlib.sha256(json.dumps(dict(config), sort_keys=True, default=str).encode())
    tensors = list(model.state_dict().values())
    for tensor in (tensors[0], tensors[len(tensors) // 2], tensors[-1]):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def content_hash(source: Any) -> str:
    """The hash of an image's bytes (a file) or pixels (an in-memory image)."""
    if isinstance(source, str | Path):
        return sha256_file(Path(source))[:24]
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
    else:
        digest.update(f"{source.mode}{source.size}".encode())
        digest.update(source.tobytes())
    return digest.hexdigest()[:24]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class FeatureCache:
    """Named groups of tensors by key; in this process's memory, or as files under ``directory``."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._memory: dict[str, dict[str, torch.Tensor]] = {}

    def _path(self, key: str) -> Path:
        assert self.directory is not None  # noqa: S101
        return self.directory / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return key in self._memory if self.directory is None else self._path(key).is_file()

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        if self.directory is None:
            self._memory[key] = tensors
        else:
            atomic_write_bytes(self._path(key), save(tensors))

    def get(self, key: str) -> dict[str, torch.Tensor]:
        if self.directory is None:
            return self._memory[key]
        return load_file(str(self._path(key)))
