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


def _pack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": name}
    if isinstance(value, dict):
        return {"__dict__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_pack(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a training state")


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
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _pack(value, tensors)
    atomic_write_bytes(path, save(tensors, metadata={SKELETON_KEY: json.dumps(skeleton)}))


def load_state(path: Path) -> Any:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    return _unpack(json.loads(metadata[SKELETON_KEY]), tensors)


def rng_state() -> dict[str, Any]:
    """Every random generator a training step can draw from, on this process."""
    import random

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
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
