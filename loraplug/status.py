"""``run.json``: what a run records about itself, read and written through one typed class.

A run writes :class:`RunStatus` when it starts and updates it as it goes (its step, data summary,
the batch size ``auto`` chose, its end); ``runs list``, ``runs show``, the report, ``--resume``,
``loraplug export`` and exporters (kohya's ``ss_*`` metadata) read it back through the same class,
so every reader agrees on each field's name and type.

The file carries ``schema_version``. A ``run.json`` without one was written before the version was
recorded (version 1, the same fields) and reads the same way. Keys this version does not know — a
newer loraplug's — are kept as they are (:attr:`RunStatus.extra`) and written back unchanged.

Only the standard library is imported: listing runs reads every run's status and must stay instant.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from loraplug.atomic import atomic_write_json
from loraplug.errors import LoraplugError

#: The file, in the run directory.
STATUS_FILE = "run.json"
#: The version this loraplug writes. 1: the fields before the version was recorded (no key);
#: 2: ``schema_version`` and ``monitor`` added.
SCHEMA_VERSION = 2
#: What a ``run.json`` without ``schema_version`` is.
UNVERSIONED = 1

# The states a run writes (``runs list`` adds ``damaged`` and ``unreadable``, never written).
RUNNING = "running"
EXPORTING = "exporting"
FINISHED = "finished"
FAILED = "failed"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class RunStatus:
    """The fields of ``run.json`` (docs/runs.md). ``None`` means not recorded (yet); it is not written.

    Change it with :meth:`update` (one field or a few, read-modify-write, atomic) or build one and
    :meth:`save` it; read it with :meth:`read` (errors name the file) or :meth:`load` (``None`` when
    there is none to read).
    """

    schema_version: int = SCHEMA_VERSION
    #: ``running``, ``exporting``, ``finished``, ``failed`` or ``interrupted``.
    status: str = RUNNING
    #: Optimizer steps done (updated every ``train.log_every_n_steps``).
    step: int = 0
    recipe_hash: str | None = None
    #: ISO 8601 with the UTC offset.
    started_at: str | None = None
    finished_at: str | None = None
    #: The checkpoint step a ``--resume`` continued from.
    resumed_at_step: int | None = None
    loraplug_version: str | None = None
    smoke: bool = False
    processes: int | None = None
    #: The main process, so ``runs list`` tells a killed run (process gone) from a running one.
    pid: int | None = None
    host: str | None = None
    #: ``{"metric": eval.monitor, "lower_is_better": bool}`` as the metric declared it when the run
    #: started, so ``runs list`` ranks evaluations without loading the plugin that declared it.
    monitor: dict[str, Any] | None = None
    #: The data summary (samples, truncated, dropped…), as printed.
    data: dict[str, Any] | None = None
    #: What ``train.batch_size = "auto"`` chose and measured; a resume reuses the choice.
    auto_batch: dict[str, Any] | None = None
    train_loss: float | None = None
    #: ``[[step, val_loss], ...]``.
    val_losses: list[Any] | None = None
    #: ``[{"step": N, "val_loss": …, <eval.metrics>…}, ...]``, from the step-0 baseline on.
    evaluations: list[dict[str, Any]] | None = None
    #: ``{"metric", "value", "step"}`` of the best evaluation.
    best: dict[str, Any] | None = None
    stopped_early: bool | None = None
    tokens_per_second: float | None = None
    #: ``[{"name", "kind", "ok", "error"}, ...]``, re-exports included.
    exports: list[dict[str, Any]] | None = None
    #: The one-paragraph error of a failed or interrupted run.
    error: str | None = None
    #: Keys this version does not know, kept as read.
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # -- reading ----------------------------------------------------------------------------------

    @classmethod
    def read(cls, run_dir: Path) -> RunStatus:
        """``run_dir``'s status; a missing or damaged ``run.json`` is a :class:`LoraplugError` naming it."""
        path = run_dir / STATUS_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LoraplugError(
                f"{run_dir} is not a loraplug run directory (no {STATUS_FILE})",
                fix="Pass a directory that `loraplug runs list` shows, e.g. runs/quickstart",
            ) from None
        except OSError as exc:
            problem = f"cannot be read ({exc.strerror or exc})"
        except ValueError as exc:  # JSON and UTF-8 errors alike
            problem = f"is not valid JSON ({str(exc).splitlines()[0]})"
        else:
            try:
                return cls.from_json(raw)
            except ValueError as exc:
                problem = str(exc)
        raise LoraplugError(
            f"The run's {STATUS_FILE} {problem}",
            where=str(path),
            fix="loraplug writes it in one piece, so something else changed it: restore it from a backup. The run's "
            "adapter, checkpoints and exports do not depend on it",
        )

    @classmethod
    def load(cls, run_dir: Path) -> RunStatus | None:
        """``run_dir``'s status, or ``None`` when it has no ``run.json`` or one that cannot be read."""
        try:
            return cls.read(run_dir)
        except LoraplugError:
            return None

    @classmethod
    def from_json(cls, raw: Any) -> RunStatus:
        """A status from ``run.json``'s parsed contents; a value of the wrong type is a ``ValueError`` naming its key."""
        if not isinstance(raw, dict):
            raise ValueError(f"holds a JSON {type(raw).__name__}, not the object loraplug writes")
        hints = _field_types()
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in hints:
                extra[key] = value
            elif not _is_a(value, hints[key]):
                raise ValueError(
                    f"holds a {_json_type(value)} in {key!r}, where loraplug writes {_describe(hints[key])}"
                )
            else:
                known[key] = value
        known.setdefault("schema_version", UNVERSIONED)
        return cls(**known, extra=extra)

    # -- writing ----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``run.json`` holds: the fields recorded (not ``None``), then the unknown keys kept."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name != "extra" and value is not None:
                out[item.name] = value
        # A file written by a newer loraplug keeps its version: its extra keys are still in it.
        out["schema_version"] = max(self.schema_version, SCHEMA_VERSION)
        return {**out, **{k: v for k, v in self.extra.items() if k not in out}}

    def save(self, run_dir: Path) -> None:
        """Write ``run_dir/run.json`` atomically (a reader sees the old file or this one)."""
        atomic_write_json(run_dir / STATUS_FILE, self.to_json())

    @classmethod
    def update(cls, run_dir: Path, **changes: Any) -> RunStatus:
        """Set some fields of ``run_dir``'s status and save it; returns the new status.

        What is on disk is read first, so fields another writer recorded (the batch size chosen,
        a re-export) are kept. An unreadable ``run.json`` is replaced. An unknown field name is a
        ``TypeError``: only the fields above are ever written.
        """
        status = dataclasses.replace(cls.load(run_dir) or cls(), **changes)
        status.save(run_dir)
        return status

    def with_export(self, name: str, kind: str, *, ok: bool, error: str | None) -> RunStatus:
        """This status with export ``name``'s outcome recorded (replacing an earlier one of that name)."""
        entries = [e for e in self.exports or [] if e.get("name") != name]
        return dataclasses.replace(
            self, exports=[*entries, {"name": name, "kind": kind, "ok": ok, "error": error}]
        )

    # -- questions --------------------------------------------------------------------------------

    def evaluation_scores(self) -> list[tuple[int, dict[str, float]]]:
        """``evaluations`` as ``(step, {metric: score})`` pairs, as the training loop produced them."""
        return [
            (int(e.get("step", 0)), {k: v for k, v in e.items() if k != "step"})
            for e in self.evaluations or []
        ]


@cache
def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(RunStatus)
    return {item.name: hints[item.name] for item in dataclasses.fields(RunStatus) if item.name != "extra"}


def _is_a(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation (``int | None``, ``dict[str, Any]``…); an int is a float."""
    if hint is Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_a(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    base = typing.get_origin(hint) or hint
    if isinstance(value, bool):  # JSON's true is not 1
        return base is bool
    if base is float:
        return isinstance(value, int | float)
    return isinstance(value, base)


def _describe(hint: Any) -> str:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        dict: "an object",
        list: "a list",
    }
    return " or ".join(names.get(typing.get_origin(o) or o, "null") for o in options if o is not type(None))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {int: "number", float: "number", str: "string", dict: "object", list: "list"}.get(
        type(value), type(value).__name__
    )
