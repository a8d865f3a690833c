"""Evaluation metrics for causal LMs: perplexity, and generation metrics on validation samples.

Generation metrics complete the last assistant turn of the first ``eval.generate_samples``
validation records greedily and compare it with the reference turn. Scales are the libraries' own:
BLEU and chrF 0–100 (sacrebleu), ROUGE-L F-measure 0–1 (rouge-score); Distinct-n is the share of
unique n-grams among all generated n-grams; exact match and F1 are 0–1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loraplug import DataBundle, LoraplugError, ModelBundle, RunContext

if TYPE_CHECKING:
    from loraplug_causal_lm.options import CausalLMOptions

#: name → what it measures (declared as metric kinds; see plugin.py)
METRICS = {
    "perplexity": "exp(validation loss per target token)",
    "bleu": "corpus BLEU of generated vs reference responses (sacrebleu, 0-100)",
    "chrf": "corpus chrF (sacrebleu, 0-100)",
    "rougeL": "mean ROUGE-L F-measure (rouge-score, 0-1)",
    "distinct_1": "unique unigrams / all generated unigrams",
    "distinct_2": "unique bigrams / all generated bigrams",
    "exact_match": "share of responses equal to the reference (whitespace- and case-normalised)",
    "f1": "macro F1 of the generated answer against each sample's `label` field",
    "reward_accuracy": "preference pairs (dpo, orpo): share of validation pairs whose chosen reward beats the rejected",
    "reward_margin": "preference pairs: mean chosen reward − rejected reward over validation pairs",
    "chosen_logps": "preference pairs: mean log-probability of the chosen completions",
    "rejected_logps": "preference pairs: mean log-probability of the rejected completions",
}
#: The metrics computed on preference pairs (loraplug_causal_lm.preference.evaluate_pairs).
PREFERENCE = {"reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"}
GENERATED = set(METRICS) - {"perplexity"} - PREFERENCE
#: The metrics where a lower score is better (declared in their KindSpec; every other one: higher).
LOWER_IS_BETTER = frozenset({"perplexity", "rejected_logps"})


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def distinct(texts: Sequence[str], n: int) -> float:
    grams = [
        tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)
    ]
    return len(set(grams)) / len(grams) if grams else 0.0


def macro_f1(predictions: Sequence[str], labels: Sequence[str]) -> float:
    classes = set(labels)
    scores = []
    for cls in classes:
        tp = sum(p == cls and label == cls for p, label in zip(predictions, labels, strict=True))
        fp = sum(p == cls and label != cls for p, label in zip(predictions, labels, strict=True))
        fn = sum(p != cls and label == cls for p, label in zip(predictions, labels, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def evaluate(
    metrics: list[str],
    model: ModelBundle,
    options: CausalLMOptions,
    data: DataBundle,
    scores: dict[str, float],
    ctx: RunContext,
) -> dict[str, float]:
    from loraplug_causal_lm.compute import complete

    out: dict[str, float] = {}
    if "perplexity" in metrics and "val_loss" in scores:
        out["perplexity"] = math.exp(min(scores["val_loss"], 50.0))
    if PREFERENCE & set(metrics):
        from loraplug_causal_lm.preference import evaluate_pairs

        scored = evaluate_pairs(model, ctx)
        out.update({m: scored[m] for m in metrics if m in PREFERENCE})
    wanted = [m for m in metrics if m in GENERATED]
    if not wanted:
        return out
    records = list(data.val or [])[: ctx.recipe.eval.generate_samples]
    if not records:
        raise LoraplugError(
            f"Generation metrics ({', '.join(wanted)}) need validation samples, and the data has none",
            fix="Set data.val_fraction or data.val_path",
        )
    prompts, references = [], []
    for record in records:
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(messages[:last])
        references.append(messages[last]["content"])
    hypotheses = complete(model, options, prompts)
    if "bleu" in wanted or "chrf" in wanted:
        import sacrebleu

        if "bleu" in wanted:
            out["bleu"] = float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
        if "chrf" in wanted:
            out["chrf"] = float(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    if "rougeL" in wanted:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"])
        out["rougeL"] = sum(
            scorer.score(r, h)["rougeL"].fmeasure for r, h in zip(references, hypotheses, strict=True)
        ) / len(records)
    if "distinct_1" in wanted:
        out["distinct_1"] = distinct(hypotheses, 1)
    if "distinct_2" in wanted:
        out["distinct_2"] = distinct(hypotheses, 2)
    if "exact_match" in wanted:
        out["exact_match"] = sum(
            _normalise(h) == _normalise(r) for h, r in zip(hypotheses, references, strict=True)
        ) / len(records)
    if "f1" in wanted:
        labels: list[Any] = [r.get("label") for r in records]
        if any(label is None for label in labels):
            raise LoraplugError(
                "The f1 metric needs a `label` field on every validation sample",
                where=next(r["id"] for r in records if r.get("label") is None),
                fix='Add "label" to each JSONL line, or drop f1 from eval.metrics',
            )
        out["f1"] = macro_f1(
            [_normalise(h) for h in hypotheses], [_normalise(str(label)) for label in labels]
        )
    return out
