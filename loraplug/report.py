"""The run report: ``report.html`` in the run directory, so a person looks at a run instead of its logs.

It shows the run's status and data summary, one PNG plot per metric found in ``metrics.jsonl`` (loss
and validation loss share one), the sample texts and images side by side per step, and each export
with its manifest. The plots go to ``report/`` beside the page; both are written atomically (a new
``report/`` replaces the old one whole, then ``report.html`` is renamed into place), so a reader never
sees half a report. The page is plain HTML with no scripts and no network access: it opens from a
laptop, a cluster's file browser or a CI artifact alike.

matplotlib is imported only when a report is drawn, through its Agg canvas directly rather than
pyplot, so drawing a report never changes a notebook's backend or touches a display.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from loraplug.bundles import Artifact
from loraplug.rundir import RECIPE_FILE, atomic_dir, atomic_write_json, atomic_write_text
from loraplug.runinfo import RunInfo, human_size, read_run

REPORT_FILE = "report.html"
REPORT_DIR = "report"
#: What plugins show of the latest evaluation (:func:`show_in_report`): one JSON file per name, and the
#: files (images) those show, which the plugin writes here too.
EVALUATION_DIR = "evaluation"
#: Plotted together, because a person compares them: training loss and validation loss.
LOSS_PLOT = (("train", "loss"), ("eval", "val_loss"))


@dataclass
class Plot:
    """One PNG: its path relative to the run directory and the ``(split, metric)`` series it draws."""

    file: str
    title: str
    series: list[tuple[str, str]]


def write_report(run_dir: Path) -> Path:
    """(Re)write ``report.html`` and its plots for the run in ``run_dir``; return the page's path."""
    info = read_run(run_dir)
    series = info.series()
    plots = plan_plots(series)
    with atomic_dir(run_dir / REPORT_DIR, replace=True) as tmp:
        for plot in plots:
            draw_plot(plot, series, tmp / Path(plot.file).name)
    page = run_dir / REPORT_FILE
    atomic_write_text(page, render_html(info, plots))
    return page


def write_report_or_warn(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """Write the report at the end of a run; a failure is a warning, never a failed run."""
    try:
        return write_report(run_dir)
    except Exception as exc:  # noqa: BLE001 — the run itself is done; the report must not undo that
        warn(
            f"could not write the run report ({type(exc).__name__}: {exc}); `loraplug runs show {run_dir}` retries"
        )
        return None


def show_in_report(run_dir: Path, name: str, artifacts: Sequence[Artifact]) -> Path:
    """Show ``artifacts`` in the report's "Evaluation" section under the heading ``name``.

    For what a scalar metric cannot show — a confusion matrix, a per-class table, a calibration curve —
    from a plugin's ``loraplug_evaluate`` (``ctx.run_dir``; it runs on the main process). Each call
    replaces what ``name`` showed before, so the report shows the latest evaluation's. Artifacts are
    rendered by type as samples are (:class:`loraplug.Artifact`: table, image, text, audio); write an
    image's file under ``run_dir / EVALUATION_DIR`` first. Returns the JSON file written.
    """
    path = run_dir / EVALUATION_DIR / f"{_file_safe(name)}.json"
    atomic_write_json(path, {"name": name, "outputs": [artifact.as_json(run_dir) for artifact in artifacts]})
    return path


def plan_plots(series: dict[tuple[str, str], Any]) -> list[Plot]:
    """One plot per ``(split, metric)``, training loss and validation loss on one: every metric is shown."""
    plots: list[Plot] = []
    loss = [key for key in LOSS_PLOT if key in series]
    if loss:
        plots.append(Plot(f"{REPORT_DIR}/loss.png", "loss", loss))
    ordered = sorted((key for key in series if key not in loss), key=lambda key: (key[0] != "train", key))
    used = {plot.file for plot in plots}
    for split, name in ordered:
        stem = f"{REPORT_DIR}/{split}-{_file_safe(name)}"
        file = f"{stem}.png"
        # Names that differ only in characters a file name cannot hold ("a/b", "a b") get a suffix.
        for n in range(2, len(used) + 2):
            if file not in used:
                break
            file = f"{stem}-{n}.png"
        used.add(file)
        plots.append(Plot(file, f"{split}/{name}", [(split, name)]))
    return plots


def draw_plot(plot: Plot, series: dict[tuple[str, str], list[tuple[int, float]]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(6.4, 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for split, name in plot.series:
        points = series[(split, name)]
        steps = [step for step, _ in points]
        values = [value for _, value in points]
        # Markers make the few points of a short run or a sparse evaluation visible.
        axes.plot(
            steps, values, marker="o" if len(points) <= 40 else None, markersize=3, label=f"{split}/{name}"
        )
    axes.set_title(plot.title)
    axes.set_xlabel("step")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if len(plot.series) > 1:
        axes.legend()
    figure.savefig(path, format="png")


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "metric"


# --- the page ---------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f6f6f6; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.status { font-weight: bold; padding: 2px 8px; border-radius: 4px; color: #fff; }
.finished { background: #2e7d32; } .failed, .damaged, .unreadable { background: #c62828; } .interrupted { background: #ef6c00; } .running, .unknown { background: #1565c0; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } .plots figure { margin: 0; } .plots img { width: 480px; border: 1px solid #eee; }
.sample { white-space: pre-wrap; max-width: 40em; } .samples img { max-width: 256px; display: block; }
.error { background: #fdecea; border-left: 4px solid #c62828; padding: 0.6em 1em; white-space: pre-wrap; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; } .dim { color: #777; }
"""


def render_html(info: RunInfo, plots: list[Plot]) -> str:
    sections = [
        _header(info),
        _section(
            "Data",
            _key_values(info.data)
            if info.data
            else _dim("No data summary (the run stopped before its data loaded)."),
        ),
        _section("Metrics", _final_metrics(info) + _plots(plots)),
        *([_section("Evaluation", shown)] if (shown := _evaluation(info.path)) else []),
        _section("Samples", _samples(info)),
        _section("Exports", _exports(info)),
        _section("Recipe", _recipe(info)),
    ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(info.name)} — loraplug run report</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(sections)
        + f'\n<p class="dim">Written by loraplug {_e(info.recorded.loraplug_version or "")} at {generated}. '
        f"Rewrite it with <code>loraplug runs show {_e(str(info.path))}</code>.</p>\n</body></html>\n"
    )


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _href(path: str) -> str:
    return _e(quote(path))


def _dim(text: str) -> str:
    return f'<p class="dim">{_e(text)}</p>'


def _section(title: str, body: str) -> str:
    return f"<h2>{_e(title)}</h2>\n{body}"


def _table(headers: list[str], rows: list[list[str]], *, numeric: frozenset[int] = frozenset()) -> str:
    """A table of cells that are already HTML; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _key_values(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>" for k, v in values.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def _when(stamp: Any) -> datetime | None:
    try:
        return datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


def _header(info: RunInfo) -> str:
    recorded = info.recorded
    status = info.status
    steps = f"{info.step} / {info.total_steps}" if info.total_steps else str(info.step)
    started, finished = _when(recorded.started_at), _when(recorded.finished_at)
    facts: dict[str, Any] = {"run directory": info.path, "steps": steps}
    if started:
        facts["started"] = started.strftime("%Y-%m-%d %H:%M:%S")
    if started and finished:
        facts["duration"] = str(finished - started)
    best = info.best()
    if best:
        facts[f"best {best.metric}"] = f"{best.value:.4f} at step {best.step}"
    for key in ("tokens_per_second", "processes", "recipe_hash", "smoke"):
        if getattr(recorded, key) is not None:
            facts[key.replace("_", " ")] = getattr(recorded, key)
    message = info.problem or (
        recorded.error if status != "finished" else None
    )  # a damaged adapter, a failure
    error = f'<div class="error">{_e(message)}</div>' if message else ""
    return (
        f'<h1>{_e(info.name)} <span class="status {_e(status)}">{_e(status)}</span></h1>\n'
        f"{error}{_key_values(facts)}"
        f'<p class="dim">TensorBoard: <code>tensorboard --logdir {_e(str(info.path / "tb"))}</code></p>'
    )


def _final_metrics(info: RunInfo) -> str:
    series = info.series()
    if not series:
        return _dim("No metrics were logged.")
    rows = []
    for (split, name), points in sorted(series.items(), key=lambda item: (item[0][0] != "train", item[0])):
        values = [value for _, value in points]
        step, last = points[-1]
        rows.append(
            [
                _e(split),
                _e(name),
                _e(f"{last:.6g}"),
                str(step),
                _e(f"{min(values):.6g}"),
                _e(f"{max(values):.6g}"),
                str(len(points)),
            ]
        )
    return _table(
        ["split", "metric", "last", "at step", "min", "max", "points"],
        rows,
        numeric=frozenset({2, 3, 4, 5, 6}),
    )


def _plots(plots: list[Plot]) -> str:
    if not plots:
        return ""
    figures = "".join(
        f'<figure><img src="{_href(p.file)}" alt="{_e(", ".join(f"{s}/{m}" for s, m in p.series))}"></figure>'
        for p in plots
    )
    return f'<div class="plots">{figures}</div>'


def _samples(info: RunInfo) -> str:
    if not info.samples:
        return _dim(
            "No samples (set eval.sample_prompts to see generations before, during and after training)."
        )
    prompts: list[str] = []
    cells: dict[tuple[str, int], str] = {}
    for sample_set in info.samples:
        for record in sample_set.records:
            prompt = str(record.get("prompt", ""))
            if prompt not in prompts:
                prompts.append(prompt)
            cells[(prompt, sample_set.step)] = _sample_cell(info.path, record)
    steps = [s.step for s in info.samples]
    headers = ["prompt"] + [("before training" if step == 0 else f"step {step}") for step in steps]
    rows = [
        [f'<div class="sample">{_e(p)}</div>'] + [cells.get((p, step), "") for step in steps] for p in prompts
    ]
    return f'<div class="samples">{_table(headers, rows)}</div>'


def _sample_cell(run_dir: Path, record: dict[str, Any]) -> str:
    """A sample's outputs, each rendered by its type (text, image, audio, table)."""
    outputs = record.get("outputs")
    if not isinstance(outputs, list):  # written before samples were typed: an image and/or a text
        outputs = ([{"type": "image", "path": record["image"]}] if record.get("image") else []) + (
            [{"type": "text", "text": record["text"]}] if record.get("text") is not None else []
        )
    # Images first, as they always were: a grid reads best above its caption.
    ordered = sorted((o for o in outputs if isinstance(o, dict)), key=lambda o: o.get("type") != "image")
    return "".join(_artifact_html(run_dir, output) for output in ordered)


def _artifact_html(run_dir: Path, output: dict[str, Any]) -> str:
    kind = output.get("type")
    caption = f'<div class="dim">{_e(output["caption"])}</div>' if output.get("caption") else ""
    if kind in ("image", "audio"):
        path = str(output.get("path", ""))
        if not (run_dir / path).is_file():
            return _dim(f"({kind} {path} is missing)")
        if kind == "image":
            return f'<a href="{_href(path)}"><img src="{_href(path)}" alt="{_e(path)}"></a>{caption}'
        return f'<audio controls src="{_href(path)}"></audio>{caption}'
    if kind == "table":
        rows = [row for row in output.get("rows") or [] if isinstance(row, dict)]
        columns = list(rows[0]) if rows else []
        return _table(columns, [[_e(_plain(row.get(c, ""))) for c in columns] for row in rows]) + caption
    if kind == "text":
        return f'<div class="sample">{_e(output.get("text", ""))}</div>{caption}'
    return _dim(f"(a {kind} output this version of loraplug cannot show)")


def _evaluation(run_dir: Path) -> str:
    """What plugins showed of the latest evaluation (:func:`show_in_report`), one heading per name."""
    parts = []
    for path in sorted((run_dir / EVALUATION_DIR).glob("*.json")):
        try:
            shown = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a torn or foreign file: the rest of the report still renders
        if not isinstance(shown, dict) or not isinstance(shown.get("outputs"), list):
            continue
        body = "".join(_artifact_html(run_dir, o) for o in shown["outputs"] if isinstance(o, dict))
        parts.append(f"<h3>{_e(shown.get('name', path.stem))}</h3>\n{body}")
    return "\n".join(parts)


def _exports(info: RunInfo) -> str:
    failed = [e for e in info.recorded.exports or [] if isinstance(e, dict) and not e.get("ok", True)]
    if not info.exports and not failed:
        return _dim("No exports.")
    rows = []
    for manifest in info.exports:
        files = manifest.get("files") or []
        size = sum(int(f.get("size", 0)) for f in files if isinstance(f, dict))
        plugin = manifest.get("plugin") or {}
        listing = "".join(
            f'<li><code>{_e(f.get("path"))}</code> {_e(human_size(int(f.get("size", 0))))} <span class="dim">sha256 {_e(str(f.get("sha256", ""))[:16])}…</span></li>'
            for f in files
            if isinstance(f, dict)
        )
        rows.append([
            f"<a href=\"{_href(manifest['dir'] + '/export.json')}\">{_e(manifest.get('name', manifest['dir']))}</a>",
            _e(manifest.get("kind", "")),
            _e(f"{plugin.get('distribution', '')} {plugin.get('version', '')}".strip()),
            f"<details><summary>{len(files)} files, {_e(human_size(size))}</summary><ul>{listing}</ul></details>",
            _e(manifest.get("loads_with", "")),
            "<br>".join(f"{_e(k)}: {_e(_plain(v))}" for k, v in (manifest.get("figures") or {}).items()),
            "<br>".join(_e(n) for n in manifest.get("notes") or []),
        ])  # fmt: skip
    for export in failed:
        rows.append(
            [
                _e(export.get("name", "")),
                _e(export.get("kind", "")),
                "",
                "failed",
                f'<span class="error">{_e(export.get("error", ""))}</span>',
                "",
                "",
            ]
        )
    return _table(["export", "kind", "plugin", "files", "loads with", "figures", "notes"], rows)


def _recipe(info: RunInfo) -> str:
    try:
        text = (info.path / RECIPE_FILE).read_text(encoding="utf-8")
    except OSError:
        return _dim("No recipe.toml in the run directory.")
    return f"<details><summary>recipe.toml (resolved: every default written out)</summary><pre>{_e(text)}</pre></details>"
