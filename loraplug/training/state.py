"""Nested training state (optimizer, scheduler, RNG) as one safetensors file — nothing pickled.

Tensors and arrays go into the safetensors payload; everything else (numbers, strings, the shape of
the nesting, whether a key was an int or a container a tuple) goes into a JSON skeleton stored in
the file's metadata. Loading rebuilds exactly the object that was saved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from loraplug.rundir import atomic_write_bytes

SKELETON_KEY = "loraplug.state"


class _Packer:
    """Splits a nested value into tensors (named ``t0``, ``t1``…) and a JSON skeleton that names them."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._names: dict[int, str] = {}  # id of a tensor already stored → its name
        self._storages: set[int] = set()

    def pack(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {"__tensor__": self._tensor(value)}
        if isinstance(value, np.ndarray):
            name = f"t{len(self.tensors)}"
            self.tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
            return {"__ndarray__": name}
        if isinstance(value, dict):
            return {"__dict__": [[self.pack(k), self.pack(v)] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"__tuple__": [self.pack(v) for v in value]}
        if isinstance(value, list):
            return [self.pack(v) for v in value]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"cannot store {type(value).__name__} in a training state")

    def _tensor(self, value: torch.Tensor) -> str:
        # One tensor referenced twice (bitsandbytes' quantization maps, shared by every parameter's
        # state) is stored once and loaded back as one object; safetensors refuses shared memory.
        if id(value) in self._names:
            return self._names[id(value)]
        name = self._names[id(value)] = f"t{len(self.tensors)}"
        stored = value.detach().cpu().contiguous()
        storage = stored.untyped_storage().data_ptr()
        if storage in self._storages and stored.numel():
            stored = stored.clone()  # a view into a tensor stored already: its own copy
            storage = stored.untyped_storage().data_ptr()
        self._storages.add(storage)
        self.tensors[name] = stored
        return name


def _unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__tuple__" in value:
            return tuple(_unpack(v, tensors) for v in value["__tuple__"])
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in value["__dict__"]}
    return value


def save_state(path: Path, value: Any) -> None:
    packer = _Packer()
    skeleton = packer.pack(value)
    atomic_write_bytes(path, save(packer.tensors, metadata={SKELETON_KEY: json.dumps(skeleton)}))


def load_state(path: Path) -> Any:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    return _unpack(json.loads(metadata[SKELETON_KEY]), tensors)


def rng_state() -> dict[str, Any]:
    """Every random generator a training step can draw from, on this process."""
    import random

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
