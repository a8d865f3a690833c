"""Preference pairs: JSONL lines → ``preference`` records → encoded pairs → batches of chosen then rejected rows.

A line is ``{"prompt", "chosen", "rejected"}`` (strings; an optional ``system``), or the chat form
``{"messages": [the prompt turns], "chosen", "rejected"}`` where chosen and rejected are an assistant
turn's text, one ``{"role": "assistant", "content"}`` turn or a list of them (TRL's conversational
``{"prompt": [turns], "chosen": [turns], "rejected": [turns]}`` reads the same). A record keeps the
prompt with the chosen turns as its ``messages`` — what cleaning filters read — and the rejected turns
beside them.

Each side is encoded as a chat sample whose targets are its own turns only (the prompt is masked, as
for SFT). A pair whose chosen and rejected are equal teaches nothing, and one whose prompt fills
``max_length`` has no completion token left to compare: both are skipped and counted in the data
summary and, when the recipe cleans, in the cleaning report.

Imported by hook bodies only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplug import (
    DEFAULT_OBJECTIVE,
    Batch,
    DataBundle,
    LoraplugError,
    ModelBundle,
    PreparedData,
    Record,
    RunContext,
)
from loraplug.toolkit import token_limit
from loraplug_causal_lm import jsonl
from loraplug_causal_lm.encode import Encoded, Encoder, pad_samples
from loraplug_causal_lm.jsonl import BadLine, chat_turns

if TYPE_CHECKING:
    from loraplug_causal_lm.options import CausalLMOptions

FORMAT_HELP = (
    'Each line must be {"prompt": "...", "chosen": "...", "rejected": "..."} or '
    '{"messages": [{"role": "user", "content": "..."}], "chosen": "...", "rejected": "..."}'
)
#: The cleaning report's name for what pairs drop, and what it removes.
SKIP_FILTER = "preference pairs"
SKIP_DESCRIPTION = (
    "pairs whose chosen equals rejected, or whose prompt leaves no completion token within max_length"
)
SAME = "chosen equals rejected"
NO_ROOM = "prompt truncated away"


def _turns(value: Any, name: str) -> list[dict[str, str]]:
    """An answer as assistant turns: a string, one turn, or a list of turns."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    turns = [value] if isinstance(value, dict) else value
    if not isinstance(turns, list) or not turns:
        raise BadLine(f"`{name}` must be a string, an assistant turn or a non-empty list of turns")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise BadLine(f"{name}[{i}] must be an object with a string `content`")
        if turn.get("role", "assistant") != "assistant":
            raise BadLine(
                f"{name}[{i}].role is {turn.get('role')!r}; chosen and rejected are assistant turns"
            )
    return [{"role": "assistant", "content": t["content"]} for t in turns]


def _prompt(obj: dict[str, Any]) -> list[dict[str, str]]:
    prompt = obj.get("messages", obj.get("prompt"))
    if isinstance(prompt, str):
        turns = [{"role": "user", "content": prompt}]
        if isinstance(obj.get("system"), str):
            turns.insert(0, {"role": "system", "content": obj["system"]})
        return turns
    if not isinstance(prompt, list) or not prompt:
        raise BadLine("the prompt (`prompt` or `messages`) must be a string or a non-empty list of turns")
    turns = chat_turns(prompt, "messages" if "messages" in obj else "prompt")
    if turns[-1]["role"] == "assistant":
        raise BadLine(
            "the prompt ends with an assistant turn; the answers to compare are `chosen` and `rejected`"
        )
    return turns


def parse_pair(obj: Any) -> Record:
    """A line's JSON value as a preference record (without its id)."""
    if not isinstance(obj, dict):
        raise BadLine(f"expected a JSON object, got {type(obj).__name__}")
    if "chosen" not in obj or "rejected" not in obj:
        raise BadLine(f"it has no chosen/rejected pair (keys: {', '.join(sorted(obj)) or 'none'})")
    prompt = _prompt(obj)
    chosen, rejected = _turns(obj["chosen"], "chosen"), _turns(obj["rejected"], "rejected")
    extras = {k: v for k, v in obj.items() if k not in ("prompt", "messages", "system", "chosen", "rejected")}
    return {"messages": prompt + chosen, "rejected": rejected, **extras}


def load(path: Path, val_path: Path | None, val_fraction: float, skip_bad: bool, seed: int) -> DataBundle:
    """``data.kind = "pairs"``: read as ``jsonl`` is, each line a preference pair."""
    return jsonl.load(
        path, val_path, val_fraction, skip_bad, seed, parse=parse_pair, format_help=FORMAT_HELP, noun="pairs"
    )


def is_pair(record: Record) -> bool:
    return "rejected" in record and "messages" in record


# -- encoding -------------------------------------------------------------------------------------


@dataclass
class EncodedPair:
    """One pair: both sides tokenised with the prompt masked; ``reference``: the reference model's
    log-probabilities of (chosen, rejected), when computed before training."""

    id: str
    chosen: Encoded
    rejected: Encoded
    reference: tuple[float, float] | None = None

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def split_record(record: Record) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """``(prompt turns, chosen turns, rejected turns)`` of a preference record."""
    messages = record["messages"]
    start = max(i for i, m in enumerate(messages) if m["role"] != "assistant") + 1
    return messages[:start], messages[start:], list(record["rejected"])


def encode_pair(encoder: Encoder, record: Record) -> EncodedPair:
    prompt, chosen, rejected = split_record(record)
    sample_id = str(record.get("id", "?"))
    return EncodedPair(
        sample_id,
        encoder.encode({"id": sample_id, "messages": prompt + chosen}, last_turns=len(chosen)),
        encoder.encode({"id": sample_id, "messages": prompt + rejected}, last_turns=len(rejected)),
    )


def skip_reason(record: Record, pair: EncodedPair) -> str | None:
    """Why a pair cannot be learned from (:data:`SAME`, :data:`NO_ROOM`), or ``None``."""
    _, chosen, rejected = split_record(record)
    if [t["content"] for t in chosen] == [t["content"] for t in rejected]:
        return SAME
    if not pair.chosen.num_targets or not pair.rejected.num_targets:
        return NO_ROOM
    return None


def encode_pairs(
    encoder: Encoder, records: Sequence[Record], data: DataBundle, split: str
) -> tuple[list[EncodedPair], dict[str, int]]:
    """Every record of ``split`` encoded as a pair; the unusable ones skipped and counted (in the
    cleaning report too when the recipe cleans), and the token limits of ``[data.clean]`` applied."""
    limit = token_limit(data, split)
    report = data.report.split(split) if data.report is not None else None
    counter = report.counter(SKIP_FILTER, SKIP_DESCRIPTION) if report is not None else None
    kept: list[EncodedPair] = []
    counts = {SAME: 0, NO_ROOM: 0, "truncated": 0}
    for record in records:
        if not is_pair(record):
            raise LoraplugError(
                f"A preference objective trains on chosen/rejected pairs, but sample {record.get('id', '?')} has keys "
                f"{', '.join(sorted(record))}",
                where=str(record.get("id", "?")),
                fix='Use data.kind = "pairs" (JSONL of {"prompt", "chosen", "rejected"}) with train.objective = "dpo" or "orpo"',
            )
        pair = encode_pair(encoder, record)
        if limit is not None and not limit.keep(
            record, max(pair.chosen.full_length, pair.rejected.full_length)
        ):
            continue
        reason = skip_reason(record, pair)
        if reason is not None:
            counts[reason] += 1
            if counter is not None and report is not None and data.report is not None:
                counter.remove(
                    pair.id, record["messages"][-1]["content"], reason, data.report.options.examples
                )
                if report.after is not None:
                    report.after -= 1
            continue
        counts["truncated"] += pair.truncated
        kept.append(pair)
    return kept, {
        f"skipped pairs ({k})" if k != "truncated" else "truncated pairs": v for k, v in counts.items()
    }


class PairCollator:
    """Pads a list of pairs into one batch: the chosen sides in rows ``0..n-1``, the rejected in ``n..2n-1``.

    ``num_targets`` is the number of pairs — a preference loss is summed over pairs, so accumulation
    over micro-batches of different lengths stays exact. ``reference_logps`` (``2n`` numbers, in the
    rows' order) is set when the reference was computed before training.
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, pairs: list[EncodedPair]) -> Batch:
        import torch

        inputs = pad_samples([p.chosen for p in pairs] + [p.rejected for p in pairs], self.pad_id)
        if all(p.reference is not None for p in pairs):
            chosen = [p.reference[0] for p in pairs if p.reference is not None]
            rejected = [p.reference[1] for p in pairs if p.reference is not None]
            inputs["reference_logps"] = torch.tensor(chosen + rejected, dtype=torch.float32)
        return Batch(
            inputs=inputs,
            num_targets=len(pairs),
            num_tokens=int(inputs["attention_mask"].sum()),
            sample_ids=[p.id for p in pairs],
        )


# -- preparing a run's pairs ----------------------------------------------------------------------


def preference_objective(ctx: RunContext) -> str | None:
    """The recipe's preference objective (``dpo``, ``orpo``), or ``None`` for SFT."""
    from loraplug_causal_lm.plugin import OBJECTIVES

    objective = ctx.recipe.objective
    return objective.kind if objective is not None and objective.kind in OBJECTIVES else None


def wants_pairs(data: DataBundle, ctx: RunContext) -> bool:
    """Whether the run trains on pairs: a preference objective, or pair records (refused below without one)."""
    first = data.train[0] if isinstance(data.train, Sequence) and data.train else None
    return preference_objective(ctx) is not None or (first is not None and is_pair(first))


def prepare_pairs(
    model: ModelBundle, options: CausalLMOptions, data: DataBundle, ctx: RunContext
) -> PreparedData:
    # dpo, orpo, or another plugin's objective for causal LMs: its train_step reads the same pair batches.
    objective = ctx.recipe.objective.kind if ctx.recipe.objective is not None else DEFAULT_OBJECTIVE
    if objective == DEFAULT_OBJECTIVE:
        raise LoraplugError(
            "The data holds preference pairs (chosen/rejected), and train.objective is sft, which learns one answer",
            where="train.objective",
            fix='Set train.objective = "dpo" or "orpo" (docs/preference.md), or train SFT on a jsonl of prompt/response',
        )
    if not isinstance(data.train, Sequence):
        raise LoraplugError(
            f"The {objective} objective reads a list of pairs, and the data is a stream",
            where="data.kind",
            fix='Use data.kind = "pairs"',
        )
    if options.packing:
        raise LoraplugError(
            f"model.packing = true, but the {objective} objective compares the two sides of a pair row by row",
            where="model.packing",
            fix="Set model.packing = false (or leave it unset)",
        )
    tokenizer = model.components["tokenizer"]
    encoder = Encoder(tokenizer, max_length=options.max_length, train_on_prompt=False)
    train, counts = encode_pairs(encoder, data.train, data, "train")
    val = encode_pairs(encoder, list(data.val), data, "val")[0] if data.val else None
    if not train:
        raise LoraplugError(
            f"No preference pair is left to train on: {', '.join(f'{k} {v}' for k, v in counts.items() if v)}",
            fix="Raise model.max_length, or check that chosen and rejected differ",
        )
    collate = PairCollator(tokenizer.pad_token_id)
    objective_options = ctx.recipe.objective.options if ctx.recipe.objective is not None else None
    if objective == "dpo" and (
        getattr(objective_options, "precompute_reference", False) or starts_from_adapter(ctx)
    ):
        from loraplug_causal_lm.preference import precompute_reference

        batch_size = ctx.recipe.train.batch_size if isinstance(ctx.recipe.train.batch_size, int) else 4
        seconds = precompute_reference(
            model.module, train + (val or []), collate, batch_size, options.loss_chunk_tokens, ctx.warn
        )
        ctx.info(
            f"dpo: reference log-probabilities of {len(train) + len(val or [])} pairs computed in {seconds:.1f}s"
        )
    summary: dict[str, Any] = {k: v for k, v in counts.items() if v}
    return PreparedData(train=train, collate=collate, val=val, summary=summary)


def starts_from_adapter(ctx: RunContext) -> bool:
    """Whether the adapter starts from an earlier one (``adapter.init_from``): then it is DPO's reference."""
    return getattr(ctx.recipe.adapter.options, "init_from", None) is not None
