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
    """``[data]``: the data kind's options plus the keys the core owns (``clean``, ``balance_by``…).

    ``filters`` are the ``[[data.clean.filters]]`` tables, each checked against its filter kind.
    """

    core: DataCoreOptions = field(default_factory=DataCoreOptions)
    filters: list[KindSection] = field(default_factory=list)

    def resolved(self) -> dict[str, Any]:
        out = {**super().resolved(), **_plain(self.core)}
        if self.filters:
            out["clean"]["filters"] = [f.resolved() for f in self.filters]
        return out


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
    #: ``train.optimizer``'s kind and the ``[optimizer]`` table, checked against it.
    optimizer: KindSection
    eval: EvalSection
    #: ``train.objective``'s kind and the ``[objective]`` table, checked against it (``None``: built by
    #: hand without one — the default ``sft``, the model's own loss).
    objective: KindSection | None = None
    exports: list[ExportSection] = field(default_factory=list)
    #: The plugin computing each name in ``eval.metrics``.
    metrics: dict[str, Served] = field(default_factory=dict)
    #: Deprecations found while checking: the recipe runs, and the CLI prints each as a warning.
    notes: list[str] = field(default_factory=list)

    def monitor_lower_is_better(self) -> bool:
        """Whether a lower ``eval.monitor`` is better: ``eval.monitor_mode``, else as the metric declares
        (``val_loss``, the core's own, is lower-is-better)."""
        from loraplug.runinfo import lower_is_better

        served = self.metrics.get(self.eval.monitor)
        declared = lower_is_better(
            self.eval.monitor, self.eval.monitor_mode, served.spec.higher_is_better if served else None
        )
        return True if declared is None else declared

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default written out — what ``recipe.toml`` in a run holds."""
        return {
            "run": _plain(self.run),
            "data": self.data.resolved(),
            "model": self.model.resolved(),
            "adapter": self.adapter.resolved(),
            "train": _plain(self.train),
            "optimizer": _plain(self.optimizer.options),
            # An objective without options (sft) writes no empty [objective] table.
            **({"objective": objective} if (objective := self._objective_options()) else {}),
            "eval": _plain(self.eval),
            "export": [e.resolved() for e in self.exports],
        }

    def _objective_options(self) -> dict[str, Any]:
        return _plain(self.objective.options) if self.objective is not None else {}

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
    plain: dict[str, Any] = _drop_none(model.model_dump(mode="json"))
    return plain


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
