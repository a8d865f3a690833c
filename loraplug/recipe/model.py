"""A validated recipe: typed sections, the plugin serving each kind, and its resolved form."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel

from loraplug.data.options import DataCoreOptions
from loraplug.kinds import Served
from loraplug.recipe.sections import EvalSection, RunSection, TrainSection


@dataclass
class KindSection:
    """A plugin-owned section: its kind, its validated options and who serves it."""

    kind: str
    options: BaseModel
    served: Served

    def resolved(self) -> dict[str, Any]:
        return {"kind": self.kind, **_plain(self.options)}


@dataclass
class DataSection(KindSection):
    """``[data]``: the data kind's options plus the keys the core owns (``clean``, ``balance_by``…)."""

    core: DataCoreOptions = field(default_factory=DataCoreOptions)

    def resolved(self) -> dict[str, Any]:
        return {**super().resolved(), **_plain(self.core)}


@dataclass
class ExportSection(KindSection):
    """One ``[[export]]``; ``name`` is its directory under ``exports/`` (default: the kind)."""

    name: str = ""

    def resolved(self) -> dict[str, Any]:
        out = super().resolved()
        if self.name != self.kind:
            out["name"] = self.name
        return out


@dataclass
class Recipe:
    """Everything a run needs to know, checked, with defaults filled in."""

    path: Path
    run: RunSection
    data: DataSection
    model: KindSection
    adapter: KindSection
    train: TrainSection
    eval: EvalSection
    exports: list[ExportSection] = field(default_factory=list)
    #: The plugin computing each name in ``eval.metrics``.
    metrics: dict[str, Served] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default written out — what ``recipe.toml`` in a run holds."""
        return {
            "run": _plain(self.run),
            "data": self.data.resolved(),
            "model": self.model.resolved(),
            "adapter": self.adapter.resolved(),
            "train": _plain(self.train),
            "eval": _plain(self.eval),
            "export": [e.resolved() for e in self.exports],
        }

    def to_toml(self) -> str:
        return tomli_w.dumps(self.resolved())

    def training_fingerprint(self) -> dict[str, Any]:
        """The parts that determine the trained weights (not the run's name or exports)."""
        resolved = self.resolved()
        resolved["run"] = {"seed": resolved["run"]["seed"]}
        resolved.pop("export")
        return resolved

    def hash(self) -> str:
        canonical = json.dumps(self.resolved(), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _plain(model: BaseModel) -> dict[str, Any]:
    """Options as TOML-writable values (paths as strings, no ``None``: TOML has no null)."""
    return _drop_none(model.model_dump(mode="json"))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
