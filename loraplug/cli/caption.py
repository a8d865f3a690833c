"""``loraplug data caption DIR --kind KIND``: write a caption beside every image of a folder.

The work is :func:`loraplug.captioning.caption_folder` (the studio calls it too); this module turns
the command line into its arguments and prints what it did.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from loraplug.cli.shared import console, err_console, host, warn_broken_plugins
from loraplug.errors import LoraplugError

#: How many of the captions just written the command shows, as a taste of what the model says.
SHOWN = 3


def _tags(values: tuple[str, ...]) -> list[str]:
    """``--prefix "sks, 1girl" --prefix solo`` → ``["sks", "1girl", "solo"]``."""
    return [tag.strip() for value in values for tag in value.split(",") if tag.strip()]


def _options(pairs: tuple[str, ...]) -> tuple[dict[str, object], dict[str, str]]:
    """``--option KEY=VALUE`` pairs as options (values read as TOML: ``0.5``, ``true``, ``["a", "b"]``;
    anything else a string) and how each was written, for errors."""
    from loraplug.recipe.source import parse_value

    options: dict[str, object] = {}
    given: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LoraplugError(
                f"The option {pair!r} is not KEY=VALUE",
                where="--option",
                fix="Write it as e.g. `--option threshold=0.5`; docs/captioning.md lists each caption kind's keys",
            )
        options[key.strip()] = parse_value(value.strip())
        given[key.strip()] = f"--option {pair}"
    return options, given


@click.command("caption")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--kind", required=True, help="The caption kind: wd14 (tags), blip (a sentence), or a plugin's."
)
@click.option(
    "--option",
    "-o",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="An option of the kind (repeat): threshold=0.5, pretrained=DIR…",
)
@click.option("--overwrite", is_flag=True, help="Replace existing .txt captions (only those files).")
@click.option(
    "--prefix", multiple=True, help="Tags written first in every caption (a trigger word); comma-separated."
)
@click.option("--append", multiple=True, help="Tags written last in every caption; comma-separated.")
@click.option("--batch-size", default=8, show_default=True, help="Images captioned at once.")
@click.option("--device", help="Where the model runs: cpu, cuda, cuda:1… (default: a GPU when there is one).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def caption(
    directory: Path,
    kind: str,
    option_pairs: tuple[str, ...],
    overwrite: bool,
    prefix: tuple[str, ...],
    append: tuple[str, ...],
    batch_size: int,
    device: str | None,
    as_json: bool,
) -> None:
    """Write a caption beside every image in DIR (IMAGE.txt), with a caption kind's model.

    Images that already have a caption keep it unless --overwrite is given. Models load from the
    Hugging Face Hub or a local directory (--option pretrained=DIR); see docs/captioning.md.
    """
    from loraplug.captioning import CaptionContext, caption_folder, caption_options
    from loraplug.toolkit import cache_dir

    warn_broken_plugins()
    options, given = _options(option_pairs)
    # Checked before the folder is walked: a typo in an option costs nothing.
    caption_options(kind, options, host=host(), given=given)
    ctx = CaptionContext(
        cache_dir=cache_dir(),
        device=device,
        info=lambda m: err_console.print(m, highlight=False),
        warn=lambda m: err_console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False),
    )
    summary = caption_folder(
        directory, kind, options, overwrite=overwrite, prefix=_tags(prefix), append=_tags(append),
        batch_size=batch_size, host=host(), ctx=ctx,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary.as_json(), indent=2, ensure_ascii=False))
        return
    for image, text in list(summary.captions().items())[:SHOWN]:
        console.print(f"{escape(image.relative_to(summary.folder).as_posix())}: {escape(text)}")
    kept = f", {len(summary.kept)} kept their caption" + ("" if overwrite else " (--overwrite replaces them)")
    console.print(
        f"{summary.images} images in {escape(str(summary.folder))}: {len(summary.written)} captioned, "
        f"{len(summary.replaced)} replaced{kept if summary.kept else ''}"
        + (f", {len(summary.skipped)} skipped" if summary.skipped else "")
    )
    for image, why in summary.skipped.items():
        err_console.print(f"[yellow]warning:[/] skipped {escape(str(image))}: {escape(why)}")
