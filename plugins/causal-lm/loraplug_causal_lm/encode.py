"""Chat records → token ids and labels, with prompt masking done by character spans.

The conversation is rendered once through the tokenizer's chat template; the character span of each
assistant turn (its content and end-of-turn marker) is found by rendering the conversation up to that
turn; tokens whose characters fall inside those spans are the targets. Tokenising the whole text once
avoids the boundary errors of tokenising the prompt and the response separately (the "could not find
response key" failures of TRL's completion collator).

Labels are stored already shifted — ``labels[t]`` is the token that position ``t`` must predict — so a
loss never crosses from one sample into the next when samples are packed together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from loraplug import Batch, LoraplugError, Record
from loraplug.toolkit import TokenLimit

IGNORE = -100


@dataclass
class Encoded:
    """One tokenised sample."""

    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool
    full_length: int = field(default=0, compare=False)  # tokens before truncation (for data.clean.max_tokens)

    @property
    def num_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


class Encoder:
    """Tokenises records for one tokenizer and masking policy."""

    def __init__(self, tokenizer: Any, *, max_length: int, train_on_prompt: bool) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.train_on_prompt = train_on_prompt
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    # -- rendering ---------------------------------------------------------------------------------

    def _template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
        if not messages and not add_generation_prompt:
            return ""
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception:  # noqa: BLE001 — some templates refuse an empty or system-first conversation
            if not messages:
                return ""
            raise

    def render(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The conversation's text and the character spans of its assistant turns."""
        if not self.has_template:
            return self._render_plain(messages)
        full = self._template(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(self._template(messages[:i], add_generation_prompt=True))
            upto = self._template(messages[: i + 1])
            if not full.startswith(upto) or start > len(upto):
                raise LoraplugError(
                    "The tokenizer's chat template renders a conversation differently from its prefixes, so prompt "
                    "tokens cannot be masked reliably",
                    fix="Set model.train_on_prompt = true, or use a model whose template renders turns independently",
                )
            spans.append((start, len(upto)))
        return full, spans

    def _render_plain(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        # Without a chat template: prompt/response pairs are "prompt\nresponse"; longer conversations
        # get role labels. The response span includes nothing of the prompt.
        text, spans = "", []
        simple = [m["role"] for m in messages] == ["user", "assistant"]
        for message in messages:
            if simple:
                chunk = message["content"] + ("\n" if message["role"] == "user" else "")
            else:
                chunk = f"{message['role'].capitalize()}: {message['content']}\n"
            if message["role"] == "assistant":
                spans.append((len(text), len(text) + len(chunk)))
            text += chunk
        return text, spans

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """What generation is conditioned on: the conversation so far, up to the assistant's turn."""
        if self.has_template:
            return self._template(messages, add_generation_prompt=True)
        text, _ = self._render_plain(messages)
        return text if [m["role"] for m in messages] == ["user"] else text + "Assistant: "

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, record: Record, *, last_turns: int | None = None) -> Encoded:
        """``record``'s tokens and shifted labels; ``last_turns``: only the conversation's last that many
        assistant turns are targets, the rest is prompt whatever ``train_on_prompt`` says (a preference
        pair's completion)."""
        text, spans = self.render(record["messages"])
        tokens = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(tokens["input_ids"])
        on_prompt = self.train_on_prompt and last_turns is None
        if last_turns is not None:
            spans = spans[len(spans) - last_turns :]
        trainable = [
            on_prompt or any(start <= begin < end for start, end in spans)
            for begin, _ in tokens["offset_mapping"]
        ]
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
            trainable.append(True)
        full_length = len(ids)
        truncated = full_length > self.max_length
        ids, trainable = ids[: self.max_length], trainable[: self.max_length]
        labels = [ids[t + 1] if trainable[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
        return Encoded(
            id=str(record.get("id", "?")),
            input_ids=ids,
            labels=labels,
            truncated=truncated,
            full_length=full_length,
        )


@dataclass
class EncodedSet:
    """The encoded samples of a list of records, which record each came from, and what was dropped."""

    samples: list[Encoded]
    sources: list[int]
    counts: dict[str, int]


def encode_all(encoder: Encoder, records: list[Record], limit: TokenLimit | None = None) -> EncodedSet:
    """Encode every record; drop those outside the token limits (counted in the data report) and
    those with no target left after truncation (counted here)."""
    kept, sources, truncated, dropped = [], [], 0, 0
    for index, record in enumerate(records):
        sample = encoder.encode(record)
        if limit is not None and not limit.keep(record, sample.full_length):
            continue
        truncated += sample.truncated
        if sample.num_targets == 0:
            dropped += 1
            continue
        kept.append(sample)
        sources.append(index)
    return EncodedSet(kept, sources, {"truncated": truncated, "dropped (no target left)": dropped})


def pad_samples(samples: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """``input_ids``, ``labels`` and ``attention_mask`` of ``samples``, one row each, right-padded to the
    longest (``pad_id``; labels -100 and attention 0 on padding)."""
    import torch

    width = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        input_ids[row, :n] = torch.tensor(sample.input_ids)
        labels[row, :n] = torch.tensor(sample.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


class PadCollator:
    """Pads a list of samples to the longest, right-aligned; labels are -100 on padding."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, samples: list[Encoded]) -> Batch:
        inputs = pad_samples(samples, self.pad_id)
        labels, attention = inputs["labels"], inputs["attention_mask"]
        return Batch(
            inputs=inputs,
            num_targets=int((labels != IGNORE).sum()),
            num_tokens=int(attention.sum()),
            sample_ids=[s.id for s in samples],
        )
