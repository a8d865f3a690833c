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
from loraplug.rundir import EXPORTS_DIR, METRICS_FILE, RECIPE_FILE, SAMPLES_DIR, STATUS_FILE, read_status

#: Keys of a metrics.jsonl line that are not metrics.
RECORD_KEYS = frozenset({"step", "split", "time"})
#: The metric ``runs list`` calls "best" when the run does not say otherwise (lower is better).
DEFAULT_BEST = ("eval", "val_loss")


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
    fields: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    samples: list[SampleSet] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.recipe.get("run", {}).get("name") or self.path.name)

    @property
    def status(self) -> str:
        return effective_status(self.fields)

    @property
    def step(self) -> int:
        return int(self.fields.get("step") or 0)

    @property
    def total_steps(self) -> int | None:
        """``train.max_steps`` of the resolved recipe; ``None`` when the run's length came from epochs."""
        steps = self.recipe.get("train", {}).get("max_steps")
        return int(steps) if steps else None

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.fields.get("data") or {})

    def series(self) -> dict[tuple[str, str], list[tuple[int, float]]]:
        return metric_series(self.metrics)

    def final_metrics(self) -> dict[tuple[str, str], tuple[int, float]]:
        """The last logged value of each ``(split, metric)``, with its step."""
        return {key: points[-1] for key, points in self.series().items()}

    def best(self) -> Best | None:
        """The run's own record of its best evaluation, else the best of the monitored metric logged."""
        recorded = self.fields.get("best")
        if isinstance(recorded, dict) and {"metric", "value", "step"} <= recorded.keys():
            return Best(metric=recorded["metric"], value=float(recorded["value"]), step=int(recorded["step"]))
        evaluation = self.recipe.get("eval", {})
        watched = str(evaluation.get("monitor", DEFAULT_BEST[1]))
        lower = lower_is_better(watched, str(evaluation.get("monitor_mode", "auto")))
        return best_metric(self.metrics, ("eval", watched), lower=lower)


def lower_is_better(monitor: str, mode: str = "auto") -> bool:
    """Whether a lower ``monitor`` score is better: ``eval.monitor_mode``, or for ``auto`` losses and perplexity."""
    if mode != "auto":
        return mode == "min"
    return "loss" in monitor.lower() or "perplexity" in monitor.lower()


def is_run_dir(path: Path) -> bool:
    return (path / STATUS_FILE).is_file()


def read_run(path: Path) -> RunInfo:
    """Read the run in ``path``; a directory that holds no run is a :class:`LoraplugError`."""
    if not path.is_dir():
        raise LoraplugError(f"{path} does not exist or is not a directory", fix="Pass a run directory, e.g. runs/quickstart")
    fields = read_status(path)
    if fields is None:
        raise LoraplugError(
            f"{path} is not a loraplug run directory (no readable {STATUS_FILE})",
            fix="Pass a directory that `loraplug runs list` shows, e.g. runs/quickstart",
        )
    return RunInfo(
        path=path,
        fields=fields,
        metrics=read_metrics(path / METRICS_FILE),
        samples=read_samples(path / SAMPLES_DIR),
        exports=read_exports(path / EXPORTS_DIR),
        recipe=_read_toml(path / RECIPE_FILE),
    )


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


def effective_status(fields: dict[str, Any]) -> str:
    """``finished``, ``failed``, ``interrupted`` or ``running``.

    A process killed outright (SIGKILL, out of memory, power loss) cannot record its end, so its
    ``run.json`` still says ``running``. When the run recorded its process id on this host and that
    process is gone, the run was interrupted. On another host we cannot tell, and keep ``running``.
    """
    status = str(fields.get("status") or "unknown")
    if status not in ("running", "exporting"):
        return status
    pid, host = fields.get("pid"), fields.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _process_alive(pid):
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


def best_metric(records: list[dict[str, Any]], watched: tuple[str, str] = DEFAULT_BEST, *, lower: bool = True) -> Best | None:
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
