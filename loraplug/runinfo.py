"""Reading a run directory back: its status, metrics, samples and exports.

``loraplug runs list``, ``loraplug runs show`` and the run report all look at a run through this one
module, so they agree on what a run's status is and which metric was best. Only the standard library
is imported: listing runs must stay instant.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraplug.errors import LoraplugError
from loraplug.rundir import (
    ADAPTER_DIR,
    ADAPTER_FILE,
    CHECKPOINTS_DIR,
    EXPORTS_DIR,
    METRICS_FILE,
    RECIPE_FILE,
    SAMPLES_DIR,
    STATUS_FILE,
)
from loraplug.status import RunStatus

#: Keys of a metrics.jsonl line that are not metrics.
RECORD_KEYS = frozenset({"step", "split", "time"})
#: The metric ``runs list`` calls "best" when the run does not say otherwise (lower is better).
DEFAULT_BEST = ("eval", "val_loss")
#: The status of a finished run whose adapter is missing or cut short: its training result is lost.
DAMAGED = "damaged"
#: The status ``runs list`` shows for a run whose ``run.json`` cannot be read.
UNREADABLE = "unreadable"
#: safetensors refuses headers longer than this; a longer length field means the file is not one.
MAX_SAFETENSORS_HEADER = 100 << 20


@dataclass
class SampleSet:
    """The samples of one step: ``samples/step-N.json``, a list of ``{prompt, text, image}``."""

    step: int
    records: list[dict[str, Any]]


@dataclass
class Best:
    metric: str
    value: float
    step: int


@dataclass
class RunInfo:
    """Everything a run directory says about its run. Missing or torn files read as empty."""

    path: Path
    #: What ``run.json`` recorded.
    recorded: RunStatus
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[SampleSet] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    #: Why a finished run's adapter cannot be loaded (:func:`safetensors_problem`): the run is ``damaged``.
    adapter_problem: str | None = None
    #: Why the run could not be read at all (``runs list`` shows it as ``unreadable``).
    unreadable: str | None = None

    @property
    def name(self) -> str:
        return str(self.recipe.get("run", {}).get("name") or self.path.name)

    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER_DIR / ADAPTER_FILE

    @property
    def status(self) -> str:
        if self.unreadable:
            return UNREADABLE
        status = effective_status(self.recorded)
        # A finished run's result is its adapter: without a whole one it is not finished in any useful sense.
        return DAMAGED if status == "finished" and self.adapter_problem else status

    @property
    def problem(self) -> str | None:
        """Why the run is ``unreadable`` or ``damaged``, as one line; ``None`` when it is neither."""
        if self.unreadable:
            return self.unreadable
        return f"{ADAPTER_DIR}/{ADAPTER_FILE} {self.adapter_problem}" if self.adapter_problem else None

    @property
    def step(self) -> int:
        return self.recorded.step

    @property
    def total_steps(self) -> int | None:
        """``train.max_steps`` of the resolved recipe; ``None`` when the run's length came from epochs."""
        steps = self.recipe.get("train", {}).get("max_steps")
        return int(steps) if steps else None

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.recorded.data or {})

    def series(self) -> dict[tuple[str, str], list[tuple[int, float]]]:
        return metric_series(self.metrics)

    def final_metrics(self) -> dict[tuple[str, str], tuple[int, float]]:
        """The last logged value of each ``(split, metric)``, with its step."""
        return {key: points[-1] for key, points in self.series().items()}

    def best(self) -> Best | None:
        """The run's own record of its best evaluation, else the best of the monitored metric logged."""
        recorded = self.recorded.best
        if recorded is not None and {"metric", "value", "step"} <= recorded.keys():
            return Best(metric=recorded["metric"], value=float(recorded["value"]), step=int(recorded["step"]))
        evaluation = self.recipe.get("eval", {})
        watched = str(evaluation.get("monitor", DEFAULT_BEST[1]))
        # A run records its monitored metric's direction, as the metric declared it, when it starts.
        monitor = self.recorded.monitor
        if (
            isinstance(monitor, dict)
            and monitor.get("metric") == watched
            and isinstance(monitor.get("lower_is_better"), bool)
        ):
            lower: bool | None = monitor["lower_is_better"]
        else:
            lower = lower_is_better(watched, str(evaluation.get("monitor_mode", "auto")))
        if lower is None:  # an older run that did not record it: nothing is guessed from the name
            return None
        return best_metric(self.metrics, ("eval", watched), lower=lower)


#: The core's own evaluation metric; lower is better.
VAL_LOSS = "val_loss"


def lower_is_better(monitor: str, mode: str = "auto", higher_is_better: bool | None = None) -> bool | None:
    """Whether a lower ``monitor`` score is better.

    ``eval.monitor_mode`` decides when it says ``min`` or ``max``; for ``auto``, the metric's own
    declaration (``KindSpec.higher_is_better``) — ``val_loss``, the core's own, is lower-is-better.
    ``None`` when neither says: nothing is guessed from the name.
    """
    if mode != "auto":
        return mode == "min"
    if monitor == VAL_LOSS:
        return True
    return None if higher_is_better is None else not higher_is_better


def is_run_dir(path: Path) -> bool:
    return (path / STATUS_FILE).is_file()


def read_run(path: Path) -> RunInfo:
    """Read the run in ``path``; a directory that holds no run, or an unreadable ``run.json``, is a :class:`LoraplugError`.

    A finished run whose adapter is missing or not a whole safetensors file gets an ``adapter_problem``
    and the status ``damaged``.
    """
    if not path.is_dir():
        raise LoraplugError(
            f"{path} does not exist or is not a directory", fix="Pass a run directory, e.g. runs/quickstart"
        )
    recorded = RunStatus.read(path)
    info = RunInfo(
        path=path,
        recorded=recorded,
        metrics=read_metrics(path / METRICS_FILE),
        samples=read_samples(path / SAMPLES_DIR),
        exports=read_exports(path / EXPORTS_DIR),
        recipe=_read_toml(path / RECIPE_FILE),
    )
    if effective_status(recorded) == "finished":
        info.adapter_problem = safetensors_problem(info.adapter_path)
    return info


def read_runs(root: Path) -> list[RunInfo]:
    """Every run :func:`find_runs` finds, newest first. One run that cannot be read never hides the others:
    it is listed with the status ``unreadable`` and its ``problem``."""
    runs = []
    for path in find_runs(root):
        try:
            info = read_run(path)
            _shown = (
                info.status,
                info.step,
                info.name,
                info.best(),
            )  # a hand-edited odd value fails here, not mid-table
        except (LoraplugError, TypeError, ValueError, AttributeError) as exc:
            what = (
                exc.what
                if isinstance(exc, LoraplugError)
                else f"{STATUS_FILE} or {RECIPE_FILE} holds a value of the wrong type ({exc})"
            )
            info = RunInfo(path=path, recorded=RunStatus(status="unknown"), unreadable=what)
        runs.append(info)
    return sorted(runs, key=lambda info: info.recorded.started_at or "", reverse=True)


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (missing, empty, cut short), or ``None`` when it is.

    Reads only the header and the file's size, so listing runs stays instant; this is the check the
    safetensors library makes before it reads any tensor.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size == 0:
                return "is empty (0 bytes)"
            if size < 8:
                return f"is {size} bytes, too short for a safetensors file"
            if length > MAX_SAFETENSORS_HEADER:
                return "is not a safetensors file (its header length is implausible)"
            if 8 + length > size:
                return f"is cut short ({size} bytes; its header alone needs {8 + length})"
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError:
        return "is not a safetensors file (its header is not JSON)"
    try:
        needed = max(
            (int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"),
            default=0,
        )
    except (AttributeError, KeyError, TypeError, IndexError, ValueError):
        return "is not a safetensors file (its header does not list tensors)"
    stored = size - 8 - length
    if needed > stored:
        return f"is cut short ({size} bytes of {8 + length + needed})"
    if needed < stored:
        return f"has {stored - needed} bytes after its last tensor (two files written into one?)"
    return None


def damaged_weights_error(path: Path, problem: str) -> LoraplugError:
    """The error for trained weights that cannot be loaded, with where to find them again."""
    run_dir = path.parent.parent if path.parent.name == ADAPTER_DIR else None
    checkpoints = sorted((run_dir / CHECKPOINTS_DIR).glob("step-*")) if run_dir is not None else []
    fix = "If it was copied from elsewhere, copy it again"
    if checkpoints:
        fix += (
            f"; the run's newest checkpoint holds the weights of its step: "
            f"`loraplug export {checkpoints[-1]} --kind KIND` exports those"
        )
    fix += "; otherwise train again (`loraplug run RECIPE --overwrite`)"
    return LoraplugError(f"The trained weights {path.name} {problem}", where=str(path), fix=fix)


def find_runs(root: Path) -> list[Path]:
    """Run directories in ``root``: ``root`` itself, its children, and their children (``smoke/``).

    Hidden directories (a run being replaced is moved to ``.name.replaced-*``) are skipped.
    """
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    for child in _visible_dirs(root):
        if is_run_dir(child):
            found.append(child)
        else:
            found.extend(grandchild for grandchild in _visible_dirs(child) if is_run_dir(grandchild))
    return found


def _visible_dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def effective_status(recorded: RunStatus) -> str:
    """``finished``, ``failed``, ``interrupted`` or ``running``.

    A process killed outright (SIGKILL, out of memory, power loss) cannot record its end, so its
    ``run.json`` still says ``running``. When the run recorded its process id on this host and that
    process is gone, the run was interrupted. On another host we cannot tell, and keep ``running``.
    """
    status = recorded.status or "unknown"
    if status not in ("running", "exporting"):
        return status
    pid, host = recorded.pid, recorded.host
    if pid is not None and host == socket.gethostname() and not _process_alive(pid):
        return "interrupted"
    return status


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of ``metrics.jsonl``; a torn last line (the run was killed mid-write) is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def metric_series(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """Each ``(split, metric)`` found in ``records`` with its ``(step, value)`` points, in log order."""
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for record in records:
        split = str(record.get("split", "train"))
        for name, value in record.items():
            if name in RECORD_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            series.setdefault((split, name), []).append((record["step"], float(value)))
    return series


def best_metric(
    records: list[dict[str, Any]], watched: tuple[str, str] = DEFAULT_BEST, *, lower: bool = True
) -> Best | None:
    """The best value of the watched metric (validation loss unless told otherwise)."""
    points = metric_series(records).get(watched)
    if not points:
        return None
    step, value = (min if lower else max)(points, key=lambda point: point[1])
    return Best(metric=watched[1], value=value, step=step)


def read_samples(directory: Path) -> list[SampleSet]:
    sets = []
    for path in sorted(directory.glob("step-*.json")):
        try:
            step = int(path.stem.removeprefix("step-"))
            records = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(records, list):
            sets.append(SampleSet(step, [r for r in records if isinstance(r, dict)]))
    return sorted(sets, key=lambda s: s.step)


def read_exports(directory: Path) -> list[dict[str, Any]]:
    """Each export's ``export.json`` manifest, with ``dir`` (relative to the run) added."""
    manifests = []
    for path in sorted(directory.glob("*/export.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict):
            manifests.append({**manifest, "dir": f"{EXPORTS_DIR}/{path.parent.name}"})
    return manifests


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def human_size(size: int) -> str:
    """``1536`` → ``1.5 KiB``: file sizes as the report and ``runs show`` print them."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
