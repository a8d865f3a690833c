"""The ``studio`` command. Only click is imported here: every ``loraplug`` command loads this module, and
FastAPI, uvicorn and Jinja2 load only when the studio starts."""

from __future__ import annotations

from pathlib import Path

import click

import loraplug

#: SD-Trainer listens on 28000; one above it, so both can run side by side.
DEFAULT_PORT = 28001


@loraplug.hookimpl
def loraplug_register_commands(cli: click.Group) -> None:
    cli.add_command(studio)


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any but loopback needs a token.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port to listen on.",
)
@click.option(
    "--root",
    "roots",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A directory the studio may read and write (recipes/, runs/, datasets under it); repeatable. "
    "Default: the current directory. Runs start in the first.",
)
@click.option(
    "--token", default=None, help="The access token (default: a random one when --host is not loopback)."
)
@click.option("--open", "open_browser", is_flag=True, help="Open the studio in the default web browser.")
def studio(host: str, port: int, roots: tuple[Path, ...], token: str | None, open_browser: bool) -> None:
    """A web UI: recipes as forms built from the installed plugins, runs launched and watched, compared,
    and a dataset caption editor. Binds 127.0.0.1 unless told otherwise."""
    from loraplug_studio.server import serve

    serve(host=host, port=port, roots=list(roots) or [Path.cwd()], token=token, open_browser=open_browser)
