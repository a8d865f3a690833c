"""``loraplug data pack KIND SOURCE --out DIR``: any data kind's records, written as WebDataset shards.

The records are loaded by the plugin that serves KIND — the same code a recipe with ``[data] kind = KIND``
runs, with SOURCE as its ``path`` — so whatever that kind accepts, skips or rejects, packing does too.
Image files are stored with their original bytes (no re-encoding); in-memory images as PNG.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from loraplug import DataBundle, LoraplugError, Record

SHARD_PATTERN = "shard-%06d.tar"
IMAGE_EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def parse_settings(settings: tuple[str, ...]) -> dict[str, Any]:
    """``-o KEY=VALUE`` pairs; values are TOML (``0.1``, ``true``, ``"x"``), else plain strings."""
    from loraplug.toolkit import parse_value

    parsed: dict[str, Any] = {}
    for setting in settings:
        key, sep, raw = setting.partition("=")
        if not sep or not key.strip():
            raise LoraplugError(
                f"The option {setting!r} is not KEY=VALUE",
                fix="Write each setting as -o KEY=VALUE, a key of the data kind (`loraplug recipe keys` lists them)",
            )
        parsed[key.strip()] = parse_value(raw)
    return parsed


def to_sample(record: Record, index: int) -> dict[str, Any]:
    """A record as a webdataset sample: image bytes + .txt caption, or .json chat; the source id kept in .json."""
    import io

    sample: dict[str, Any] = {"__key__": f"{index:08d}"}
    if "image" in record:
        image = record["image"]
        if isinstance(image, str | Path):
            sample[IMAGE_EXTENSIONS.get(Path(image).suffix.lower(), "png")] = Path(image).read_bytes()
        else:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            sample["png"] = buffer.getvalue()
        sample["txt"] = str(record.get("caption", "")).encode("utf-8")
        sample["json"] = json.dumps({"source_id": record.get("id")}).encode("utf-8")
    elif "messages" in record:
        rest = {k: v for k, v in record.items() if k != "id"}
        sample["json"] = json.dumps({"source_id": record.get("id"), **rest}, ensure_ascii=False).encode(
            "utf-8"
        )
    else:
        raise LoraplugError(
            f"Record {record.get('id', '?')} is neither an image sample nor a chat sample (keys: {', '.join(sorted(record))})",
            fix="Pack a data kind whose records have image + caption or messages",
        )
    return sample


def check_out(out: Path, source: Path, *, overwrite: bool) -> None:
    """Refuse an ``--out`` that is, holds or lies inside SOURCE, or that holds anything but earlier shards.

    Checked before the records load. loraplug's one replace rule (:func:`loraplug.safety.may_replace`):
    ``--overwrite`` replaces a directory of shards this command wrote, never the user's files.
    """
    from loraplug.toolkit import may_replace

    shards_only = out.is_dir() and all(p.is_file() and fnmatch(p.name, "shard-*.tar") for p in out.iterdir())
    may_replace(
        out,
        holds="shards (shard-*.tar)" if shards_only else None,
        overwrite=overwrite,
        key="--out",
        ours="a directory of shards (it holds files other than shard-*.tar)",
        replacing="only once the new shards are complete",
        elsewhere="choose another --out",
        keep=[source],
    )


def write_shards(data: DataBundle, out: Path, *, maxcount: int) -> tuple[int, list[str]]:
    """Write every record (train, then val) to shards in ``out``, atomically; return (samples, shard names).

    ``out`` must have passed :func:`check_out`: whatever is there is replaced once the new shards are complete.
    """
    from itertools import chain

    from webdataset import ShardWriter

    from loraplug.toolkit import atomic_dir

    count = 0
    with atomic_dir(out, replace=True) as tmp:
        # mtime fixed: packing the same data twice gives byte-identical shards.
        with ShardWriter(str(tmp / SHARD_PATTERN), maxcount=maxcount, verbose=0, mtime=0.0) as writer:
            for count, record in enumerate(chain(data.train, data.val or []), start=1):
                writer.write(to_sample(record, count - 1))
        if count == 0:
            raise LoraplugError(
                "The data kind read no records, so there was nothing to pack",
                fix="Check SOURCE and the -o settings; the data kind's summary above says what it skipped",
            )
        names = sorted(p.name for p in tmp.glob("shard-*.tar"))
    return count, names


def brace_pattern(out: Path, names: list[str]) -> str:
    """The ``urls`` value a recipe uses for the shards just written."""
    if len(names) == 1:
        return str(out / names[0])
    first, last = names[0][len("shard-") : -len(".tar")], names[-1][len("shard-") : -len(".tar")]
    return str(out / f"shard-{{{first}..{last}}}.tar")


def _option_problem(error: Any, kind: str) -> str:
    """One pydantic error as the -o option it concerns: a missing one says how to give it."""
    key = ".".join(str(part) for part in error["loc"]) or kind
    if error["type"] == "missing":
        return f"`{key}` is required (give it as -o {key}=VALUE)"
    if error["type"] == "extra_forbidden":
        return f"`{key}` is not an option of {kind!r}"
    return f"{key}: {error['msg']}"


def load_records(kind: str, source: Path, settings: tuple[str, ...]) -> DataBundle:
    """The records of data kind ``kind`` with ``path = source`` and the ``-o`` settings, as a run would load them."""
    import click
    from pydantic import ValidationError

    from loraplug import RunContext, load_plugins
    from loraplug.toolkit import cache_dir

    plugins = load_plugins()
    plugins.warn_broken(lambda message: click.echo(f"warning: {message}", err=True))
    served = plugins.lookup("data", kind)
    model = served.spec.options_model()
    if (
        "path" not in model.model_fields
    ):  # SOURCE becomes the kind's `path`: a kind without one cannot read it
        raise LoraplugError(
            f"Data kind {kind!r} cannot be packed: SOURCE is read as the kind's `path` option, and {kind!r} has none",
            where=str(source),
            fix=(
                'WebDataset shards need no packing: use them as they are, [data] kind = "webdataset" with '
                'urls = "DIR/shard-{000000..000009}.tar"; to pack files, name the kind that reads them (imagefolder, jsonl)'
                if kind == "webdataset"
                else "Name a data kind that reads a file or folder (`loraplug recipe keys` shows the kinds with a `path`)"
            ),
        )
    values = {"path": str(source.absolute()), **parse_settings(settings)}
    try:
        options = model.model_validate(values, context={"base_dir": Path.cwd(), "check_files": True})
    except ValidationError as exc:
        problems = "; ".join(_option_problem(error, kind) for error in exc.errors())
        raise LoraplugError(
            f"The options of data kind {kind!r} do not validate: {problems}",
            fix="SOURCE is the kind's `path`; give other options as -o KEY=VALUE (`loraplug recipe keys` lists them)",
        ) from exc
    # Outside a run there is no recipe: a data kind reads its options, the seed and info/warn only.
    ctx = RunContext(
        recipe=None,  # type: ignore[arg-type]
        run_dir=Path.cwd(),
        cache_dir=cache_dir(),
        info=click.echo,
        warn=lambda message: click.echo(f"warning: {message}", err=True),
    )
    return plugins.call_typed(served, "loraplug_load_data", DataBundle, kind=kind, options=options, ctx=ctx)
