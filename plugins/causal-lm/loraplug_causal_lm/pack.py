"""Packing: several samples per row of ``max_length`` tokens, with no attention across samples.

A packed row carries, per token, its sample's position (``position_ids`` restart at 0 for every
sample) and a segment number (``segment_ids``: the sample's index in the row, -1 on padding). The
model's attention is then restricted to the token's own sample:

* ``sdpa``: a 4-D boolean block-diagonal causal mask ``(batch, 1, length, length)``, True = attend;
* ``eager``: the same mask as 0 / most-negative float, because eager attention *adds* the mask to the
  scores (a boolean mask would be added as 0/1 and silently leak);
* ``flex_attention``: a ``BlockMask`` built from the segment ids (same sample and causal), which
  PyTorch's FlexAttention uses to skip every 128×128 block of the score matrix that is wholly masked —
  attention then costs what each sample needs instead of ``length²`` per row. PyTorch has no
  FlexAttention backward on the CPU, so it trains on CUDA only (:func:`flex_training_blocker`);
* ``flash_attention_2/3``: no mask at all: the micro-batch is flattened into one row without padding
  and transformers derives the varlen ``cu_seqlens`` from the restarting ``position_ids``.

Transformers 5 returns a 4-D mask it is given unchanged (``masking_utils._preprocess_mask_arguments``)
and every LLaMA-style attention applies it as above. Labels are already shifted inside each sample
(the last token of a sample predicts nothing), so no loss term crosses a boundary either. The masks
are built on the device in :func:`packed_model_inputs`, from the small segment ids, rather than in the
collate function: a ``length²`` mask per row is not worth copying from the CPU.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loraplug import Batch
from loraplug_causal_lm.encode import IGNORE, Encoded

#: Attention implementations packing works with, and how each receives the sample boundaries.
MASK_ATTENTION = ("sdpa", "eager")
BLOCK_MASK_ATTENTION = ("flex_attention",)
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


@dataclass
class PackedRow:
    """Samples that share one row, in order."""

    samples: list[Encoded]

    @property
    def length(self) -> int:
        return sum(len(s.input_ids) for s in self.samples)


def pack(samples: Sequence[Encoded], capacity: int) -> list[PackedRow]:
    """Best-fit decreasing: longest samples first, each into the row it fills most tightly.

    Deterministic for a given list (ties keep the input order), and never more than a few percent of
    rows more than the optimum on real length distributions. Rows are formed once; the loop shuffles
    rows every epoch.
    """
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].input_ids))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row index), sorted
    for index in order:
        size = len(samples[index].input_ids)
        slot = bisect_left(free, (size, -1))
        if slot < len(free):
            space, row = free.pop(slot)
            rows[row].append(index)
            space -= size
        else:
            rows.append([index])
            row, space = len(rows) - 1, capacity - size
        if space > 0:
            insort(free, (space, row))
    return [PackedRow([samples[i] for i in sorted(members)]) for members in rows]


class PackedCollator:
    """Concatenates each row's samples; pads rows to the longest in the batch."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[PackedRow]) -> Batch:
        import torch

        width = max(row.length for row in rows)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE, dtype=torch.long)
        positions = torch.zeros(shape, dtype=torch.long)
        segments = torch.full(shape, -1, dtype=torch.long)
        ids: list[str] = []
        tokens = 0
        for r, row in enumerate(rows):
            start = 0
            for s, sample in enumerate(row.samples):
                n = len(sample.input_ids)
                input_ids[r, start : start + n] = torch.tensor(sample.input_ids)
                labels[r, start : start + n] = torch.tensor(sample.labels)
                positions[r, start : start + n] = torch.arange(n)
                segments[r, start : start + n] = s
                start += n
                ids.append(sample.id)
            tokens += start
        return Batch(
            inputs={
                "input_ids": input_ids,
                "labels": labels,
                "position_ids": positions,
                "segment_ids": segments,
            },
            num_targets=int((labels != IGNORE).sum()),
            num_tokens=tokens,
            sample_ids=ids,
        )


def attention_implementation(module: Any) -> str:
    """The attention kernel of a (possibly DDP- or PEFT-wrapped) transformers model."""
    inner = getattr(module, "module", module)  # DistributedDataParallel
    config = getattr(inner, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "sdpa")


def packed_model_inputs(inputs: dict[str, Any], implementation: str) -> dict[str, Any]:
    """The model's keyword arguments for a packed batch (input_ids, labels and segment_ids taken out)."""
    import torch

    segments = inputs["segment_ids"]
    positions = inputs["position_ids"]
    if implementation in VARLEN_ATTENTION:
        real = segments >= 0
        return {"input_ids": inputs["input_ids"][real][None], "position_ids": positions[real][None]}
    if implementation in BLOCK_MASK_ATTENTION:
        return {
            "input_ids": inputs["input_ids"],
            "position_ids": positions,
            "attention_mask": block_mask(segments),
        }
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    # Padding (segment -1) attends to padding only, so no row of the mask is empty (an empty row is NaN).
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal
    mask = allowed[:, None]
    if implementation == "eager":
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=segments.device).masked_fill_(
            ~mask, torch.finfo(torch.float32).min
        )
    return {"input_ids": inputs["input_ids"], "position_ids": positions, "attention_mask": mask}


def block_mask(segments: Any) -> Any:
    """FlexAttention's ``BlockMask`` for packed rows: a token attends to earlier tokens of its own sample.

    Padding (segment -1) attends to padding only, as in the dense mask. Building it evaluates the rule
    once per 128×128 block plus the partly masked blocks' elements; the dense ``length²`` mask is never
    kept.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def same_sample_causal(batch: Any, head: Any, query: Any, key: Any) -> Any:
        return (segments[batch, query] == segments[batch, key]) & (query >= key)

    rows, length = segments.shape
    return create_block_mask(same_sample_causal, rows, None, length, length, device=segments.device)


def flex_training_blocker(module: Any) -> str | None:
    """Why this model cannot train with FlexAttention here, or ``None`` (it can, or it does not use it).

    The loop trains on CUDA when there is a GPU and on the CPU otherwise (``pipeline.accelerator``).
    """
    import torch

    if attention_implementation(module) not in BLOCK_MASK_ATTENTION or torch.cuda.is_available():
        return None
    return f"PyTorch {torch.__version__} has no FlexAttention backward on the CPU (it trains on CUDA GPUs)"


def packed_labels(inputs: dict[str, Any], implementation: str) -> Any:
    """The labels laid out like :func:`packed_model_inputs`' tokens."""
    if implementation in VARLEN_ATTENTION:
        return inputs["labels"][inputs["segment_ids"] >= 0][None]
    return inputs["labels"]


def packs_exactly(module: Any) -> str | None:
    """Check on the model itself that two samples packed in one row give the logits they give alone.

    Returns ``None`` when they do, or why not. This is what "supported" means for packing: whatever
    the architecture, a model that ignores the mask or the position ids fails here, at start-up, instead
    of training on contaminated rows. It costs two forwards of a few tokens.
    """
    import torch

    implementation = attention_implementation(module)
    if implementation not in (*MASK_ATTENTION, *BLOCK_MASK_ATTENTION, *VARLEN_ATTENTION):
        return f"the attention implementation {implementation!r} takes no block-diagonal mask (sdpa, eager, flex and flash-attention do)"
    parameter = next(module.parameters())
    first, second = torch.arange(3, 10), torch.arange(11, 15)
    row = PackedCollator(0)([PackedRow([_probe(first), _probe(second)])])
    inputs = {k: v.to(parameter.device) for k, v in row.inputs.items()}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            alone = torch.cat(
                [
                    module(input_ids=x[None].to(parameter.device), use_cache=False).logits[0]
                    for x in (first, second)
                ]
            )
            packed = module(**packed_model_inputs(inputs, implementation), use_cache=False).logits[0]
    except (TypeError, ValueError, RuntimeError) as exc:
        return f"the model does not accept packed inputs ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    finally:
        module.train(was_training)
    tolerance = 1e-4 if parameter.dtype == torch.float32 else 5e-2
    scale = float(alone.abs().max()) or 1.0
    difference = float((packed.float() - alone.float()).abs().max())
    if difference > tolerance * max(1.0, scale):
        return f"packed logits differ from unpacked ones by {difference:.3g} on this model (mask or position ids ignored)"
    return None


def _probe(ids: Any) -> Encoded:
    tokens = ids.tolist()
    return Encoded(
        id="probe", input_ids=tokens, labels=[IGNORE] * len(tokens), truncated=False, full_length=len(tokens)
    )
