"""The hook implementations of loraplug-webdataset; module level imports click only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from loraplug import DataBundle, KindSpec, LoraplugError, RunContext, hookimpl

if TYPE_CHECKING:  # option models are imported when a recipe is checked, not at start-up
    from loraplug_webdataset.options import WebDatasetOptions


@hookimpl
def loraplug_register_kinds(register: Callable[[KindSpec], None]) -> None:
    register(
        KindSpec(
            "data",
            "webdataset",
            "loraplug_webdataset.options:WebDatasetOptions",
            "WebDataset tar shards: images + captions, or chat JSON (streamed)",
            streams=True,
            produces=("caption-image", "chat"),  # which one: option `samples` and the shards' contents
        )
    )


@hookimpl
def loraplug_load_data(kind: str, options: WebDatasetOptions, ctx: RunContext) -> DataBundle:
    from itertools import islice

    from loraplug_webdataset.stream import ShardStream, check_shards

    shards = list(options.urls)
    world = ctx.num_processes
    if len(shards) < world:
        raise LoraplugError(
            f"{len(shards)} shard(s) cannot be split over {world} processes: each process reads whole shards",
            where="data.urls",
            fix=f"Write at least {world} shards (`loraplug data pack … --maxcount` smaller), or train on fewer processes",
        )
    # A shard with no samples is named now, not met as "no batches" once the model has loaded.
    check_shards(
        shards,
        shards[ctx.process_index :: world],
        key="data.urls",
        on_corrupt=options.on_corrupt,
        warn=ctx.warn,
    )
    if options.val_urls:
        check_shards(
            list(options.val_urls),
            list(options.val_urls),
            key="data.val_urls",
            on_corrupt=options.on_corrupt,
            warn=ctx.warn,
        )
    workers = max(1, ctx.recipe.train.num_workers)
    if len(shards) < world * workers:
        ctx.warn(
            f"{len(shards)} shard(s) for {world} process(es) × {workers} DataLoader worker(s): "
            "some workers will have nothing to read"
        )
    import multiprocessing

    # Inherited by the DataLoader's workers, so skips counted there reach this process's summary.
    skipped = multiprocessing.Value("q", 0)
    train = ShardStream(
        shards,
        options,
        rank=ctx.process_index,
        world=world,
        seed=ctx.seed,
        warn=ctx.warn,
        skipped_total=skipped,
    )
    mine = " (this process's shards)" if world > 1 else ""
    val = None
    summary: dict[str, Any] = {"shards": len(shards), "train samples": "streamed"}
    if options.val_urls:
        reader = ShardStream(
            list(options.val_urls), options, rank=0, world=1, seed=ctx.seed, warn=ctx.warn, shuffle=False
        )
        val = list(islice(reader, options.val_max_samples))
        summary["val samples"] = len(val)
        if reader.skipped.count:
            summary["skipped val samples"] = reader.skipped.count
    return DataBundle(
        train=train,
        val=val,
        summary=summary,
        final_summary=lambda: {f"skipped train samples{mine}": skipped.value},
    )


@hookimpl
def loraplug_register_commands(cli: click.Group) -> None:
    data = cli.commands.get("data")
    if not isinstance(data, click.Group):
        return

    @data.command("pack")
    @click.argument("kind")
    @click.argument("source", type=click.Path(exists=True, path_type=Path))
    @click.option(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Directory for the shards.",
    )
    @click.option(
        "--maxcount", default=1000, show_default=True, type=click.IntRange(min=1), help="Samples per shard."
    )
    @click.option(
        "-o",
        "--option",
        "settings",
        multiple=True,
        metavar="KEY=VALUE",
        help="An option of data kind KIND (repeatable).",
    )
    @click.option(
        "--overwrite",
        is_flag=True,
        help="Replace the shards in --out (only once the new shards are complete).",
    )
    def pack(
        kind: str, source: Path, out: Path, maxcount: int, settings: tuple[str, ...], overwrite: bool
    ) -> None:
        """Write the records of data kind KIND read from SOURCE as WebDataset shards in --out.

        \b
        loraplug data pack imagefolder photos/ --out shards/
        loraplug data pack jsonl chats.jsonl --out shards/ --maxcount 5000
        """
        from loraplug_webdataset.pack import brace_pattern, check_out, load_records, write_shards

        check_out(out, source, overwrite=overwrite)  # before loading: a refused --out costs nothing
        data = load_records(kind, source, settings)
        count, names = write_shards(data, out, maxcount=maxcount)
        click.echo(f"packed {count} samples into {len(names)} shard(s) in {out}")
        for key, value in data.summary.items():
            click.echo(f"  {key}: {value}")
        click.echo(f'use them with:  [data] kind = "webdataset"  urls = "{brace_pattern(out, names)}"')
