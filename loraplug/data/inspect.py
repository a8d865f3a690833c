"""``loraplug data inspect``: what the model will learn, before any training.

It runs exactly what a run runs up to the batches — the data plugin's ``load_data``, ``[data.clean]``,
the model plugin's ``build_model`` and ``prepare_data`` — then shows the cleaning report and a few
samples as the model receives them, token by token, with the tokens that count toward the loss
highlighted. No adapter is attached and nothing is trained or written.

The token view needs a batch with ``input_ids`` and ``labels`` of the same shape — one label per
token, -100 = not learned — and a ``tokenizer`` among the model's components, as text models have.
A batch whose ``labels`` are one per row (a classifier's) gets the report and no token view. Labels may be stored shifted
(``labels[t]`` is the token after ``t``, as loraplug-causal-lm does) or aligned with the input
(transformers' convention); which one is read from the data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from loraplug.bundles import PreparedData
from loraplug.context import RunContext
from loraplug.data.stage import show_report
from loraplug.pipeline import load_data, prepare_data
from loraplug.plugins import PluginHost
from loraplug.recipe.model import Recipe

IGNORE = -100
TARGET_STYLE = "bold green"
CONTEXT_STYLE = "dim"


@dataclass
class TokenView:
    """One sample's tokens, with whether each counts toward the loss."""

    sample_id: str
    ids: list[int]
    learned: list[bool]
    #: Which of the sample's rows this is ("row 2 of 2"), when the sample collates into several (a
    #: preference pair: chosen, then rejected); None for one row.
    row: str | None = None

    @property
    def title(self) -> str:
        return f"{self.sample_id} ({self.row})" if self.row else self.sample_id


def _learned(ids: list[int], labels: list[int]) -> list[bool]:
    """Which tokens are targets, whether the labels are shifted by one or aligned with the tokens."""
    pairs = [(t, label) for t, label in enumerate(labels) if label != IGNORE]
    shifted = all(t + 1 < len(ids) and ids[t + 1] == label for t, label in pairs)
    learned = [False] * len(ids)
    for t, _ in pairs:
        if shifted:
            learned[t + 1] = True
        else:
            learned[t] = True
    return learned


def per_token_labels(inputs: dict[str, Any]) -> bool:
    """Whether a batch has ``input_ids`` and ``labels`` with one label per token. A classifier's
    ``labels`` (one per row) are not a token view: there is nothing to highlight."""
    ids, labels = inputs.get("input_ids"), inputs.get("labels")
    return (
        ids is not None
        and labels is not None
        and getattr(ids, "shape", None) == getattr(labels, "shape", ())
        and len(ids.shape) == 2
    )


def token_views(prepared: PreparedData, limit: int) -> Iterator[TokenView]:
    """The first ``limit`` training samples as tokens, one view per sample (a packed row holds several)
    and per row of a sample that collates into several (a preference pair's chosen and rejected)."""
    items = prepared.train if isinstance(prepared.train, Sequence) else list(islice(prepared.train, limit))
    shown = 0
    for item in items:
        batch = prepared.collate([item])
        inputs = batch.inputs
        if not per_token_labels(inputs):
            return
        views = list(_row_views(inputs, batch.sample_ids))
        if len(inputs["input_ids"]) > 1:  # one sample in several rows (a pair): shown whole, counted once
            yield from views
            shown += 1
        else:  # one row: one sample, or several packed ones, each counted
            yield from views[: limit - shown]
            shown += min(len(views), limit - shown)
        if shown >= limit:
            return


def _row_views(inputs: dict[str, Any], sample_ids: list[str]) -> Iterator[TokenView]:
    """One view per sample in each row of one collated item. An item that collates into several rows
    (a preference pair: its chosen and its rejected side) shows every row, named by the row."""
    rows = len(inputs["input_ids"])
    names = iter(sample_ids)
    for row in range(rows):
        ids, labels = inputs["input_ids"][row].tolist(), inputs["labels"][row].tolist()
        segments = inputs["segment_ids"][row].tolist() if "segment_ids" in inputs else [0] * len(ids)
        for segment in dict.fromkeys(s for s in segments if s >= 0):
            span = [t for t, s in enumerate(segments) if s == segment]
            if "attention_mask" in inputs:
                span = [t for t in span if inputs["attention_mask"][row][t]]
            tokens = [ids[t] for t in span]
            learned = _learned(tokens, [labels[t] for t in span])
            if rows == 1:
                yield TokenView(next(names, "?"), tokens, learned)
            else:
                yield TokenView(
                    sample_ids[0] if sample_ids else "?", tokens, learned, row=f"row {row + 1} of {rows}"
                )


def render_view(console: Console, view: TokenView, tokenizer: Any) -> None:
    """The sample's text, cut into runs of learned and context tokens; without colours, learned runs
    are wrapped in ⟦ ⟧."""
    plain = console.color_system is None
    text = Text()
    start = 0
    for end in range(1, len(view.ids) + 1):
        if end < len(view.ids) and view.learned[end] == view.learned[start]:
            continue
        chunk = tokenizer.decode(
            view.ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        learned = view.learned[start]
        if plain and learned:
            chunk = f"⟦{chunk}⟧"
        text.append(chunk, style=TARGET_STYLE if learned else CONTEXT_STYLE)
        start = end
    count = sum(view.learned)
    console.print(f"[bold]{escape(view.title)}[/]  {len(view.ids)} tokens, {count} learned", highlight=False)
    console.print(text, highlight=False)
    console.print()


def inspect_data(
    recipe: Recipe, host: PluginHost, console: Console, ctx: RunContext, *, samples: int
) -> None:
    """Load, clean and prepare the recipe's data as a run would; print the report and ``samples`` samples."""
    data = load_data(host, recipe, ctx)
    # The base model alone: encoding needs its tokenizer or VAE, not an adapter.
    model = host.build_model(recipe, ctx)
    prepared = prepare_data(host, recipe, model, data, ctx)
    show_report(data.report, console, None)
    summary = {**data.summary, **prepared.summary}
    console.print("data: " + ", ".join(f"{k} {v}" for k, v in summary.items()), highlight=False)
    if samples <= 0:
        return
    tokenizer = model.components.get("tokenizer")
    views = list(token_views(prepared, samples))
    if tokenizer is None or not views:
        console.print(
            f"[dim]no token view for model kind {recipe.model.kind!r}: its batches carry no input_ids with one label per token[/]"
        )
        return
    legend = "⟦learned⟧" if console.color_system is None else f"[{TARGET_STYLE}]learned[/]"
    console.print(
        f"\n[bold]{len(dict.fromkeys(v.sample_id for v in views))} training samples as the model sees them[/] ({legend}: counts toward the loss; the rest is context)\n"
    )
    for view in views:
        render_view(console, view, tokenizer)
