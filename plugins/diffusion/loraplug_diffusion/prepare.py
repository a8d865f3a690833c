"""Image records → training samples: sizes (buckets), cached latents and text encodings, and the collate.

What can be computed once is, before training: a latent per image (and per flip) when crops are not
random, a text encoding per caption (and the empty caption, for dropout) when captions are not shuffled
and the text encoder is frozen. Whatever cannot be cached is computed in the training step, from
pixels and token ids the collate function prepares.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.data import IterableDataset

from loraplug import Batch, DataBundle, LoraplugError, ModelBundle, PreparedData, Record, RunContext
from loraplug_diffusion.buckets import bucket_sizes, nearest_bucket, plan_by_bucket
from loraplug_diffusion.cache import FeatureCache, content_hash, fingerprint, text_hash
from loraplug_diffusion.captions import augment
from loraplug_diffusion.conditioning import CACHED_INPUTS, TextSide, text_side
from loraplug_diffusion.images import (
    DECODING_VERSION,
    image_size,
    load_rgb,
    place,
    to_tensor,
    to_tensor_placed,
)
from loraplug_diffusion.model import encode_latents, place_frozen
from loraplug_diffusion.options import StableDiffusionOptions

TEXT_BATCH = 32


@dataclass
class ImageSample:
    """One image as training sees it.

    :param size: the ``(width, height)`` it is cropped to.
    :param latent_key: its entry in the latent cache, or ``None`` (encoded every step).
    :param train: augment it (training) or not (validation).
    :param original: its ``(width, height)`` as displayed, when the family conditions on sizes (SDXL).
    """

    id: str
    source: Any
    caption: str
    size: tuple[int, int]
    latent_key: str | None
    train: bool
    original: tuple[int, int] | None = None


def check_image_record(record: Record) -> None:
    if "image" not in record or not isinstance(record.get("caption"), str):
        raise LoraplugError(
            f"The stable-diffusion model needs image samples with a caption, but sample {record.get('id', '?')} has "
            f"keys {', '.join(sorted(record))}",
            fix="Use an image data kind (imagefolder, or webdataset with image samples) for Stable Diffusion",
        )


class Collate:
    """Turns samples into a Batch: cached latents or pixels, cached text encodings or token ids, and
    (SDXL) each sample's size conditioning from the crop it really got."""

    def __init__(
        self,
        options: StableDiffusionOptions,
        text: TextSide,
        latents: FeatureCache,
        texts: FeatureCache | None,
    ) -> None:
        self.options = options
        self.text = text
        self.latents = latents
        self.texts = texts
        self._calls = 0

    def _rng(self) -> random.Random:
        # torch's seed differs per DataLoader worker and is derived from the run's seed, so workers do
        # not repeat each other's flips and a rerun repeats them.
        self._calls += 1
        return random.Random(f"{torch.initial_seed()}:{self._calls}")

    def __call__(self, samples: list[ImageSample]) -> Batch:
        rng = self._rng()
        options = self.options
        flips = [s.train and options.flip and rng.random() < 0.5 for s in samples]
        inputs: dict[str, torch.Tensor] = {}
        if all(s.latent_key is not None for s in samples):
            entries = [self.latents.get(s.latent_key) for s in samples]  # type: ignore[arg-type]
            inputs["latents"] = torch.stack(
                [e["flipped"] if f else e["latents"] for e, f in zip(entries, flips, strict=True)]
            )
            # Cached latents are centre crops (see _cache_latents); a flip mirrors the crop's offset.
            placements = [
                place(s.original or image_size(s.source), s.size, crop="center", flip=f, rng=None)
                for s, f in zip(samples, flips, strict=True)
                if self.text.size_conditioning
            ]
        else:
            pixels, placements = [], []
            for s, f in zip(samples, flips, strict=True):
                tensor, placement = to_tensor_placed(
                    load_rgb(s.source, s.id),
                    s.size,
                    crop=options.crop if s.train else "center",
                    flip=f,
                    rng=rng,
                )
                pixels.append(tensor)
                placements.append(placement)
            inputs["pixel_values"] = torch.stack(pixels)
        if self.text.size_conditioning:
            from loraplug_diffusion.sdxl_model import time_ids

            inputs["time_ids"] = torch.stack(
                [time_ids(p, s.size) for p, s in zip(placements, samples, strict=True)]
            )
        captions = [
            augment(
                s.caption,
                dropout=options.caption_dropout,
                shuffle=options.shuffle_tags,
                keep=options.keep_tokens,
                rng=rng,
            )
            if s.train
            else s.caption
            for s in samples
        ]
        shuffled = options.shuffle_tags and samples[0].train
        if self.texts is not None and not shuffled:
            entries = [self.texts.get(text_hash(c)) for c in captions]
            for name in entries[0]:
                inputs[CACHED_INPUTS[name]] = torch.stack([e[name] for e in entries])
        else:
            inputs.update(self.text.tokenize(captions))
        return Batch(
            inputs=inputs,
            num_targets=len(samples),
            num_tokens=len(samples),
            sample_ids=[s.id for s in samples],
        )


class StreamedImages(IterableDataset):
    """Image records from a stream, as samples cropped to ``resolution``², encoded in the training step."""

    def __init__(self, records: Iterable[Record], resolution: int) -> None:
        super().__init__()
        self.records = records
        self.resolution = resolution

    def __iter__(self) -> Iterator[ImageSample]:
        for record in self.records:
            check_image_record(record)
            yield ImageSample(
                id=str(record.get("id", "?")),
                source=record["image"],
                caption=record["caption"],
                size=(self.resolution, self.resolution),
                latent_key=None,
                train=True,
            )


def _samples(
    records: Sequence[Record],
    options: StableDiffusionOptions,
    *,
    train: bool,
    buckets: list[tuple[int, int]] | None,
    sizes: bool = False,
) -> list[ImageSample]:
    """:param sizes: record each image's size (the family conditions on it)."""
    samples = []
    square = (options.resolution, options.resolution)
    for record in records:
        check_image_record(record)
        original = image_size(record["image"]) if buckets and train or sizes else None
        size = nearest_bucket(original, buckets) if buckets and train and original else square
        samples.append(
            ImageSample(
                str(record.get("id", "?")), record["image"], record["caption"], size, None, train, original
            )
        )
    return samples


def _cache_latents(
    samples: list[ImageSample], cache: FeatureCache, vae: Any, *, flip: bool, batch: int
) -> int:
    """Give each sample its latent key, encoding what the cache lacks; return how many were encoded.

    At most ``batch`` images are encoded at once — the training batch — so building the cache never
    needs more memory than a training step that encodes its images would.
    """
    todo: dict[str, ImageSample] = {}
    for sample in samples:
        with_flip = flip and sample.train
        sample.latent_key = f"{content_hash(sample.source)}-d{DECODING_VERSION}-{sample.size[0]}x{sample.size[1]}-center{'-flip' if with_flip else ''}"
        if sample.latent_key not in cache:
            todo.setdefault(sample.latent_key, sample)
    by_size: dict[tuple[tuple[int, int], bool], list[ImageSample]] = {}
    for key, sample in todo.items():
        by_size.setdefault((sample.size, key.endswith("-flip")), []).append(sample)
    with torch.no_grad():
        for (size, with_flip), group in by_size.items():
            for start in range(0, len(group), batch):
                chunk = group[start : start + batch]
                pixels = torch.stack(
                    [
                        to_tensor(load_rgb(s.source, s.id), size, crop="center", flip=False, rng=None)
                        for s in chunk
                    ]
                )
                latents = encode_latents(vae, pixels)
                flipped = encode_latents(vae, torch.flip(pixels, dims=[-1])) if with_flip else None
                for i, sample in enumerate(chunk):
                    entry = {"latents": latents[i]}
                    if flipped is not None:
                        entry["flipped"] = flipped[i]
                    cache.put(sample.latent_key, entry)  # type: ignore[arg-type]
    return len(todo)


def _cache_texts(captions: set[str], cache: FeatureCache, text: TextSide) -> int:
    todo = sorted(c for c in captions if text_hash(c) not in cache)
    with torch.no_grad():
        for start in range(0, len(todo), TEXT_BATCH):
            chunk = todo[start : start + TEXT_BATCH]
            features = text.encode(chunk)
            for i, caption in enumerate(chunk):
                cache.put(text_hash(caption), {name: batch[i] for name, batch in features.items()})
    return len(todo)


def prepare(
    model: ModelBundle, options: StableDiffusionOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    vae = model.components["vae"]
    text = text_side(model)
    place_frozen(model, ctx.device)
    if ctx.device is not None:
        for encoder in text.encoders.values():
            encoder.to(ctx.device)
    root = ctx.cache_dir / "diffusion" if options.cache_to_disk else None
    latent_cache = FeatureCache(root / "latents" / fingerprint(vae, vae.config) if root else None)
    streamed = not isinstance(data.train, Sequence)
    trains_te = text.trains
    summary: dict[str, Any] = {}

    text_cache = None
    if options.cache_text_encoder_outputs and not trains_te and not streamed:
        text_cache = FeatureCache(root / "text" / text.fingerprint() if root else None)
    if trains_te:
        ctx.info("the text encoder trains, so captions are encoded every step")
    elif options.cache_text_encoder_outputs and options.shuffle_tags:
        ctx.warn(
            "model.shuffle_tags changes every caption each step, so training captions are encoded every step (not cached)"
        )

    if streamed:
        if options.buckets:
            ctx.warn(
                "model.buckets needs every image's size before training; streamed images are cropped to resolution² instead"
            )
        ctx.info("streamed data: latents and text encodings are computed every step")
        train: Any = StreamedImages(data.train, options.resolution)
        train_samples: list[ImageSample] = []
    else:
        buckets = bucket_sizes(options.resolution, options.bucket_step) if options.buckets else None
        train_samples = _samples(
            data.train, options, train=True, buckets=buckets, sizes=text.size_conditioning
        )
        train = train_samples
        if buckets:
            summary["buckets"] = len({s.size for s in train_samples})
    val_samples = (
        _samples(data.val, options, train=False, buckets=None, sizes=text.size_conditioning)
        if data.val
        else None
    )

    if options.cache_latents and options.crop == "random":
        ctx.warn(
            'model.crop = "random" draws a new crop every step, so training images are encoded every step (not cached)'
        )
    if options.cache_latents:
        cached = [s for s in train_samples if options.crop == "center"] + (val_samples or [])
        if cached:
            ctx.info(f"caching latents of {len(cached)} images ({'on disk' if root else 'in memory'})")
            encoded = _cache_latents(
                cached, latent_cache, vae, flip=options.flip, batch=ctx.recipe.train.batch_size
            )
            summary["latents cached"] = len({s.latent_key for s in cached})
            if root:
                summary["latents reused from disk"] = summary["latents cached"] - encoded
    if text_cache is not None:
        captions = {s.caption for s in val_samples or []}
        if not options.shuffle_tags:
            captions |= {s.caption for s in train_samples}
            if options.caption_dropout:
                captions.add("")
        _cache_texts(captions, text_cache, text)
        summary["captions cached"] = len(captions)

    # What is fully cached is not needed on the accelerator while training (kohya's trick): the VAE
    # and the text encoder go back to the CPU, and come to the device only to draw sample grids.
    on_accelerator = ctx.device is not None and torch.device(ctx.device).type != "cpu"
    if (
        on_accelerator
        and not streamed
        and all(s.latent_key is not None for s in train_samples + (val_samples or []))
    ):
        vae.to("cpu")
        summary["vae"] = "offloaded to the CPU"
    if on_accelerator and text_cache is not None and not options.shuffle_tags:
        for encoder in text.encoders.values():
            encoder.to("cpu")
        summary["text encoder"] = "offloaded to the CPU"

    plan = (
        partial(plan_by_bucket, [s.size for s in train_samples])
        if options.buckets and train_samples
        else None
    )
    return PreparedData(
        train=train,
        collate=Collate(options, text, latent_cache, text_cache),
        val=val_samples,
        summary=summary,
        plan_batches=plan,
        unit="images",
    )
