"""Reading shards: each process and DataLoader worker takes its own shards, then samples become records.

Shards are split before they are shuffled — process ``rank`` takes every ``world``-th shard, and each
of its DataLoader workers every ``workers``-th of those — so every shard is read exactly once per epoch
without the processes having to agree on a shuffle. Each reader then shuffles its own shards and
samples with a generator seeded from the run (and, in a worker, from the seed torch gives it).
"""

from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplug import LoraplugError, Record
from loraplug_webdataset.options import WebDatasetOptions

ROLES = ("system", "user", "assistant")


class BadSample(ValueError):
    """A sample that cannot become a record; the message says why."""


@dataclass
class SkipCounter:
    """Skipped samples of one reader, reported as they happen (every one of the first few, then every 100th)."""

    warn: Callable[[str], None]
    count: int = 0
    # A multiprocessing.Value shared with the DataLoader's worker processes: the run's total.
    total: Any = None

    def skip(self, where: str, why: str) -> None:
        self.count += 1
        if self.total is not None:
            with self.total.get_lock():
                self.total.value += 1
        if self.count <= 5 or self.count % 100 == 0:
            self.warn(f"skipped a corrupt sample ({where}: {why}); {self.count} skipped so far")


def decode_image(data: bytes) -> Any:
    """A fully decoded PIL image, or BadSample (truncated files fail here, not in a training step)."""
    from PIL import Image

    try:
        # Pillow's decompression-bomb warning (and error) make a skipped sample, not a crash or a huge decode.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadSample(f"image too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadSample(
            f"image does not decode ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from exc
    return image


def chat_messages(obj: Any) -> list[dict[str, str]]:
    """A text sample's JSON as chat messages: ``{"messages": [...]}`` or ``{"prompt", "response"}``."""
    if not isinstance(obj, dict):
        raise BadSample("JSON is not an object")
    if isinstance(obj.get("messages"), list) and obj["messages"]:
        messages = obj["messages"]
        if not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise BadSample(f"messages need a role ({', '.join(ROLES)}) and a string content each")
        if not any(m["role"] == "assistant" for m in messages):
            raise BadSample("no assistant message, so nothing to learn")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if isinstance(obj.get("prompt"), str) and isinstance(obj.get("response"), str):
        # As the jsonl data kind reads the same line: an optional system prompt comes first.
        system = [{"role": "system", "content": obj["system"]}] if isinstance(obj.get("system"), str) else []
        return [
            *system,
            {"role": "user", "content": obj["prompt"]},
            {"role": "assistant", "content": obj["response"]},
        ]
    raise BadSample(
        f"JSON has neither messages nor prompt/response (keys: {', '.join(sorted(obj)) or 'none'})"
    )


def to_record(sample: dict[str, Any], options: WebDatasetOptions) -> Record:
    """One webdataset sample (extension -> bytes) as a loraplug record."""
    sample_id = f"{Path(str(sample.get('__url__', '?'))).name}:{sample.get('__key__', '?')}"
    meta: Any = None
    if options.json_key in sample:
        try:
            meta = json.loads(sample[options.json_key])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadSample(f".{options.json_key} is not valid JSON") from exc
    image_key = next((k for k in options.image_keys if k in sample), None)
    if options.samples == "image" or (options.samples == "auto" and image_key is not None):
        if image_key is None:
            raise BadSample(f"no image (looked for .{', .'.join(options.image_keys)})")
        caption_key = next((k for k in options.caption_keys if k in sample), None)
        if caption_key is not None:
            caption = sample[caption_key].decode("utf-8", errors="replace").strip()
        elif isinstance(meta, dict) and isinstance(meta.get("caption", meta.get("text")), str):
            caption = meta.get("caption", meta.get("text")).strip()
        else:
            raise BadSample(
                f"image without a caption (looked for .{', .'.join(options.caption_keys)} and the JSON's caption)"
            )
        return {"id": sample_id, "image": decode_image(sample[image_key]), "caption": caption}
    if meta is None:
        parts = ", .".join(k for k in sample if not k.startswith("_"))
        raise BadSample(f"neither an image nor a .{options.json_key} text part (it has .{parts})")
    extras = (
        {k: v for k, v in meta.items() if k not in ("messages", "prompt", "response", "system", "source_id")}
        if isinstance(meta, dict)
        else {}
    )
    return {"id": sample_id, "messages": chat_messages(meta), **extras}


def shard_problem(shard: str) -> str | None:
    """Why a local shard holds no samples (empty file, not a tar, a tar with no members), or ``None``.

    Reads one tar header, so every shard is checked before training in well under a second; a shard
    damaged further in is found while reading, sample by sample. Remote shards are not checked.
    """
    import tarfile

    from loraplug_webdataset.options import REMOTE_PREFIXES

    if shard.startswith(REMOTE_PREFIXES):
        return None
    try:
        if Path(shard).stat().st_size == 0:
            return "is empty (0 bytes)"
        with tarfile.open(
            shard, "r:"
        ) as tar:  # uncompressed, as `data pack` writes; else webdataset's own error
            if tar.next() is None:
                return "is a tar archive with no files in it"
    except tarfile.ReadError:
        return None  # compressed or damaged: reading it says which, and on_corrupt decides
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def check_shards(
    shards: list[str], mine: list[str], *, key: str, on_corrupt: str, warn: Callable[[str], None]
) -> None:
    """Name the shards that hold no samples before anything loads.

    An error when every shard of ``mine`` (what this process reads) is such, or with ``on_corrupt =
    "error"``; otherwise a warning, and reading skips them.
    """
    problems = {shard: problem for shard in shards if (problem := shard_problem(shard)) is not None}
    if not problems:
        return
    shown = list(problems.items())[:5]
    listed = "; ".join(f"{shard} {problem}" for shard, problem in shown) + (
        f"; {len(problems) - 5} more" if len(problems) > 5 else ""
    )
    fix = f"Pack or copy those shards again (`loraplug data pack KIND SOURCE --out DIR`), or drop them from {key}"
    if all(shard in problems for shard in mine):
        raise LoraplugError(f"No shard of {key} holds a sample to read: {listed}", where=key, fix=fix)
    if on_corrupt == "error":
        raise LoraplugError(
            f"{len(problems)} shard(s) of {key} hold no samples: {listed}",
            where=key,
            fix=f'{fix}; or set data.on_corrupt = "skip" to skip them',
        )
    warn(f"{len(problems)} shard(s) of {key} hold no samples and are skipped: {listed}")


def _buffer_shuffle(items: Iterable[Record], size: int, rng: random.Random) -> Iterator[Record]:
    buffer: list[Record] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = rng.randrange(size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardStream:
    """An iterable of records over shards; iterate it once per epoch (the core's DataLoader does)."""

    def __init__(
        self,
        shards: list[str],
        options: WebDatasetOptions,
        *,
        rank: int,
        world: int,
        seed: int,
        warn: Callable[[str], None],
        shuffle: bool = True,
        skipped_total: Any = None,
    ) -> None:
        self.shards = shards
        self.options = options
        self.rank = rank
        self.world = world
        self.seed = seed
        self.shuffle = shuffle
        self.skipped = SkipCounter(warn, total=skipped_total)
        self._epoch = 0

    def _handler(self, exc: Exception) -> bool:
        """webdataset's error hook for unreadable shards and tar members: skip (count) or stop."""
        where = next(
            (str(a) for a in reversed(exc.args) if isinstance(a, str) and a.endswith(".tar")), "a shard"
        )
        if self.options.on_corrupt == "error":
            raise LoraplugError(
                f"A shard cannot be read: {type(exc).__name__}: {exc.args[0] if exc.args else exc}",
                where=where,
                fix='Rewrite the shard, or set data.on_corrupt = "skip" to skip and count what cannot be read',
            ) from exc
        self.skipped.skip(Path(where).name, f"{type(exc).__name__} reading the tar")
        return True

    def _mine(self) -> tuple[list[str], random.Random]:
        """This reader's shards and generator: split by process, then by DataLoader worker."""
        from torch.utils.data import get_worker_info

        worker = get_worker_info()
        index, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        self._epoch += 1  # counts epochs in this process; a worker gets a fresh seed from torch instead
        base = worker.seed - worker.id if worker is not None else self.seed * 1_000_003 + self._epoch
        rng = random.Random(f"{base}:{self.rank}:{index}")
        shards = self.shards[self.rank :: self.world][index::workers]
        if self.shuffle and self.options.shuffle_shards:
            rng.shuffle(shards)
        return shards, rng

    def __iter__(self) -> Iterator[Record]:
        from webdataset.tariterators import tarfile_samples

        shards, rng = self._mine()
        samples = tarfile_samples([{"url": url} for url in shards], handler=self._handler)
        records = self._records(samples)
        if self.shuffle and self.options.shuffle_buffer > 1:
            records = _buffer_shuffle(records, self.options.shuffle_buffer, rng)
        yield from records

    def _records(self, samples: Iterable[dict[str, Any]]) -> Iterator[Record]:
        for sample in samples:
            try:
                yield to_record(sample, self.options)
            except BadSample as exc:
                where = f"{Path(str(sample.get('__url__', '?'))).name}:{sample.get('__key__', '?')}"
                if self.options.on_corrupt == "error":
                    raise LoraplugError(
                        f"Sample {where} cannot be used: {exc}",
                        where=str(sample.get("__url__", "?")),
                        fix='Fix or drop the sample, or set data.on_corrupt = "skip" to skip and count such samples',
                    ) from exc
                self.skipped.skip(where, str(exc))
