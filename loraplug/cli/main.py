"""The ``loraplug`` command: entry point, error reporting, and the core's commands.

Nothing here imports torch at module level: ``loraplug --help`` and ``loraplug plugins list`` load
only the plugins' cheap declarations.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import click
from rich.markup import escape

from loraplug import __version__
from loraplug.cli import render
from loraplug.cli import runs as runs_commands
from loraplug.cli.caption import caption as caption_command
from loraplug.cli.export import export as export_command
from loraplug.cli.shared import console, err_console, host, warn_broken_plugins
from loraplug.errors import LoraplugError, lost_peer, path_error
from loraplug.optional import decide_for_this_process, keep_out_unused
from loraplug.plugins import FIRST_PARTY
from loraplug.quiet import debugging


def warn_deprecations(notes: list[str]) -> None:
    """The recipe's deprecated keys (it runs; it should be written differently), on stderr."""
    for note in notes:
        err_console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="loraplug")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    help="Show tracebacks (any position on the line; or LORAPLUG_DEBUG=1).",
)
def cli() -> None:
    """LoRA fine-tuning for every modality, driven by TOML recipes.

    \b
    loraplug run recipes/quickstart.toml          train a tiny LLaMA on CPU
    loraplug run RECIPE train.lr=1e-4 --smoke     check any recipe in seconds
    loraplug plugins list                         what is installed
    """


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option(
    "--smoke",
    is_flag=True,
    help="Swap the model for a tiny one (of its own architecture where its config is local), train 3 steps, "
    "write under <output_dir>/smoke.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a run directory that already holds a run (kept until the new run finishes).",
)
@click.option("--resume", is_flag=True, help="Continue the run from its newest whole checkpoint.")
@click.option("--force", is_flag=True, help="With --resume: continue even though the recipe changed.")
def run(
    recipe: Path, overrides: tuple[str, ...], smoke: bool, overwrite: bool, resume: bool, force: bool
) -> None:
    """Train as RECIPE says. OVERRIDES are dotted KEY=VALUE pairs: train.lr=1e-4 adapter.r=16."""
    from loraplug.recipe import load_recipe
    from loraplug.run import execute

    warn_broken_plugins()
    if resume and overwrite:
        raise click.UsageError("--resume continues a run and --overwrite replaces it; pass one of them")
    if force and not resume:
        raise click.UsageError("--force only applies with --resume")
    checked = load_recipe(recipe, host(), overrides, smoke=smoke)
    warn_deprecations(checked.notes)
    keep_out_unused(
        checked
    )  # before anything heavy loads: bitsandbytes, torchao, scipy only if the recipe uses them
    if int(os.environ.get("RANK", "0")) == 0:
        render.run_header(console, checked, smoke=smoke)
    outcome = execute(
        checked, host(), console=console, smoke=smoke, overwrite=overwrite, resume=resume, force=force
    )
    if outcome.run_dir and int(os.environ.get("RANK", "0")) == 0:
        render.run_summary(console, outcome)
    failed = [e for e in outcome.exports if not e.ok]
    if failed:
        raise LoraplugError(
            "Training finished and the adapter is saved, but "
            + "; ".join(f"export {e.name!r} failed: {e.error}" for e in failed),
            fix="Fix the cause, then export again without retraining: "
            + "; ".join(
                f"`loraplug export {outcome.run_dir} --kind {e.kind}"
                + (f" --name {e.name}`" if e.name != e.kind else "`")
                for e in failed
            ),
        )


@cli.group()
def recipe() -> None:
    """Check recipes without running them."""


@recipe.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option("--smoke", is_flag=True, help="Check the recipe as --smoke would run it.")
@click.option("--resolved", is_flag=True, help="Print the recipe with every default filled in.")
def recipe_check(path: Path, overrides: tuple[str, ...], smoke: bool, resolved: bool) -> None:
    """Validate a recipe completely — keys, types, files, kinds — without loading data or models."""
    from loraplug.recipe import load_recipe

    warn_broken_plugins()
    checked = load_recipe(path, host(), overrides, smoke=smoke)
    warn_deprecations(checked.notes)
    if resolved:
        click.echo(checked.to_toml(), nl=False)
    else:
        render.recipe_ok(console, checked)


@recipe.command("keys")
@click.option("--markdown", is_flag=True, help="Print the Markdown tables of docs/recipes.md.")
@click.option(
    "--first-party",
    is_flag=True,
    help="Only the core and loraplug's own plugins (what docs/recipes.md lists).",
)
def recipe_keys(markdown: bool, first_party: bool) -> None:
    """Every recipe key of the core and of each installed kind: type, default, meaning."""
    from loraplug.recipe import reference

    warn_broken_plugins()  # on stderr: the Markdown on stdout stays clean
    loaded = host()
    dists = {r.distribution for r in loaded.records if r.distribution in FIRST_PARTY} if first_party else None
    if markdown:
        click.echo(reference.markdown(loaded.registry, dists), nl=False)
    else:
        render.key_tables(
            console,
            reference.sections(loaded.registry, dists),
            reference.metrics(loaded.registry, dists),
            reference.optimizers(loaded.registry, dists),
        )


@cli.group()
def plugins() -> None:
    """Inspect installed plugins."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins_list(as_json: bool) -> None:
    """Show every installed plugin: distribution, version, kinds, hooks, status."""
    loaded = host()
    if as_json:
        click.echo(json.dumps([r.as_json() for r in loaded.records], indent=2))
    else:
        render.plugin_table(console, loaded)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--prompt", "prompts", multiple=True, required=True, help="A prompt; repeat for several.")
@click.option(
    "--base",
    is_flag=True,
    help="Generate with the untrained adapter (the base model's behaviour), to compare.",
)
def generate(run_dir: Path, prompts: tuple[str, ...], base: bool) -> None:
    """Load a run's base model with its trained adapter and generate from PROMPTs."""
    from loraplug.pipeline import generate as run_generate
    from loraplug.pipeline import load_run, run_recipe
    from loraplug.rundir import SAMPLES_DIR

    warn_broken_plugins()
    recipe = run_recipe(run_dir, host())
    keep_out_unused(recipe)  # as `run` does: no bitsandbytes, torchao, scipy unless the recipe uses them
    recipe_, ctx, model = load_run(run_dir, host(), console, with_adapter=not base, recipe=recipe)
    samples = run_generate(host(), model, recipe_, list(prompts), run_dir / SAMPLES_DIR / "generate", ctx)
    render.samples(console, samples)


@cli.group()
def data() -> None:
    """Inspect and convert training data."""


@data.command("inspect")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1)
@click.option(
    "--samples", "-n", default=3, show_default=True, help="Training samples to show token by token."
)
def data_inspect(recipe_path: Path, overrides: tuple[str, ...], samples: int) -> None:
    """Show what RECIPE's model will learn: the [data.clean] report and a few training samples token by
    token, the tokens that count toward the loss highlighted. Loads the data and the model; trains nothing."""
    from loraplug.context import RunContext
    from loraplug.data.inspect import inspect_data
    from loraplug.pipeline import cache_dir, run_dir_of
    from loraplug.recipe import load_recipe

    warn_broken_plugins()
    checked = load_recipe(recipe_path, host(), overrides)
    warn_deprecations(checked.notes)
    ctx = RunContext(
        recipe=checked,
        run_dir=run_dir_of(checked),
        cache_dir=cache_dir(),
        seed=checked.run.seed,
        info=lambda m: console.print(m, highlight=False),
        warn=lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False),
    )
    inspect_data(checked, host(), console, ctx, samples=samples)


@cli.group()
def runs() -> None:
    """Look at finished and running runs."""


runs_commands.attach(runs)
# Core commands that live in their own modules.
cli.add_command(export_command)
data.add_command(caption_command)


def _register_plugin_commands() -> None:
    host().broadcast("loraplug_register_commands", cli=cli)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code. User errors print one paragraph, tracebacks need --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    if argv is None:  # the `loraplug` program itself, not a caller in its own process
        decide_for_this_process()
    debug = "--debug" in args or debugging()
    args = [a for a in args if a != "--debug"]
    try:
        _register_plugin_commands()
        cli.main(args=args, prog_name="loraplug", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except (LoraplugError, OSError) as raised:
        if isinstance(raised, OSError) and raised.filename is None:
            return _unexpected(raised, debug)
        return _report(raised if isinstance(raised, LoraplugError) else path_error(raised), debug)
    except Exception as exc:  # noqa: BLE001 — anything else is a bug (say so, briefly), unless another process stopped first
        lost = lost_peer(exc)
        return _unexpected(exc, debug) if lost is None else _report(lost, debug)
    return 0


def _report(error: LoraplugError, debug: bool) -> int:
    """Print ``error`` as its one paragraph (after the traceback being handled, with ``--debug``)."""
    if debug:
        err_console.print(traceback.format_exc(), markup=False)
    err_console.print(f"[bold red]error:[/] {render.escape(error.paragraph())}")
    return error.exit_code


def _unexpected(exc: Exception, debug: bool) -> int:
    if debug:
        err_console.print(traceback.format_exc(), markup=False)
    err_console.print(
        f"[bold red]unexpected error:[/] {render.escape(f'{type(exc).__name__}: {exc}')}. "
        "This is a bug in loraplug or a plugin; run again with --debug for the traceback and report it."
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
