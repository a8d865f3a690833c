"""``loraplug runs list`` and ``loraplug runs show``: look at runs without reading their logs.

The commands are attached to the core's ``runs`` group by :func:`attach`. Listing reads only JSON and
TOML files; matplotlib loads only when ``runs show`` draws the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from loraplug.cli import render
from loraplug.cli.shared import console
from loraplug.errors import LoraplugError
from loraplug.runinfo import RunInfo, damaged_weights_error, read_run, read_runs

#: Where runs are listed from when no DIRECTORY is given (``run.output_dir``'s default).
DEFAULT_RUNS = Path("runs")


@click.command("list")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_runs(directory: Path | None, as_json: bool) -> None:
    """List the runs in DIRECTORY (default ./runs, and the smoke runs under it): status, steps, best metric."""
    # A DIRECTORY that is not there is a mistake (a typo); a missing ./runs only means nothing ran here yet.
    if directory is not None and not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise LoraplugError(
            f"{directory} {what}", fix="Pass the directory your runs are in (run.output_dir, default ./runs)"
        )
    root = (directory or DEFAULT_RUNS).absolute()
    runs = read_runs(root)
    if as_json:
        click.echo(json.dumps([run_summary(info) for info in runs], indent=2))
    else:
        render.run_table(console, runs, root)


@click.command("show")
@click.argument("run_dir", type=click.Path(path_type=Path))
def show_run(run_dir: Path) -> None:
    """Show RUN_DIR's status, data, final metrics and exports, and (re)write its report.html."""
    from loraplug.report import write_report

    info = read_run(run_dir.absolute())
    render.run_details(console, info)
    render.export_manifest_table(console, info.exports)
    try:
        page = write_report(info.path)
    except OSError as exc:
        raise LoraplugError(
            f"Could not write the report in {info.path}: {exc}", fix="Check the directory is writable"
        ) from exc
    console.print(f"  report   {render.escape(str(page))}")
    if info.adapter_problem:  # shown above as damaged; the exit status says so too
        raise damaged_weights_error(info.adapter_path, info.adapter_problem)


def run_summary(info: RunInfo) -> dict[str, object]:
    """One run as ``runs list --json`` prints it."""
    best = info.best()
    return {
        "name": info.name,
        "path": str(info.path),
        "status": info.status,
        "step": info.step,
        "total_steps": info.total_steps,
        "best": {"metric": best.metric, "value": best.value, "step": best.step} if best else None,
        "started_at": info.recorded.started_at,
        "finished_at": info.recorded.finished_at,
        "smoke": info.recorded.smoke,
        "problem": info.problem,
    }


def attach(group: click.Group) -> None:
    """Add ``list`` and ``show`` to the ``runs`` group."""
    group.add_command(list_runs)
    group.add_command(show_run)
