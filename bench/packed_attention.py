"""Packed attention: a dense block-diagonal mask (sdpa) against FlexAttention's block mask.

Packing puts several documents in one row of ``length`` tokens. With a dense 4-D mask, attention
computes the whole ``length²`` score matrix of every row, whatever the documents inside; FlexAttention
(``model.attn_implementation = "flex_attention"``) skips every 128×128 block that is wholly masked,
so a row of short documents costs about what the documents need. This measures both on the same
packed rows, through loraplug's own packing code (``pack``, ``PackedCollator``, ``loss_sum``), at row
lengths 512, 2048 and 8192, with a realistic document mix (log-normal lengths, median ~200 tokens, a
long tail), on a LLaMA-shaped model with random weights:

  train    forward + backward of the summed loss (what a training step costs), where the device has
           a FlexAttention backward (PyTorch has none on the CPU)
  forward  forward only, no gradients (what evaluation costs)

Each (implementation, length) is timed several times, interleaved with the other implementation so
machine load hits both alike; the minimum is reported as real (non-padding) tokens per second. The
two implementations' losses on the same rows must agree (relative 1e-4), or the script fails.

    python bench/packed_attention.py                      # the table for docs/performance.md
    python bench/packed_attention.py --lengths 512 --repeats 2 --out /tmp/pa.json   # quick check

This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IMPLEMENTATIONS = ("sdpa", "flex_attention")


class LossMismatch(Exception):
    """The two attention paths gave different losses on the same packed rows."""


#: Tokens timed per measurement: the same work at every row length (rows = TOKENS // length).
TOKENS = 16384
VOCAB = 4096
MODEL = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "vocab_size": VOCAB,
    "tie_word_embeddings": False,
}


def document_lengths(rng: random.Random, total: int, longest: int) -> list[int]:
    """Log-normal document lengths (median ~200, tail to ``longest``) adding up to about ``total``."""
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(max(8, min(longest, int(rng.lognormvariate(math.log(200), 0.9)))))
    return lengths


def packed_batch(length: int, seed: int) -> tuple[Any, int]:
    """A micro-batch of packed rows of ``length`` tokens holding ~TOKENS real tokens, and that count."""
    from loraplug_causal_lm.encode import Encoded
    from loraplug_causal_lm.pack import PackedCollator, pack

    rng = random.Random(seed)
    samples = []
    for i, n in enumerate(document_lengths(rng, TOKENS, length)):
        ids = [rng.randrange(4, VOCAB) for _ in range(n)]
        samples.append(
            Encoded(id=f"d{i}", input_ids=ids, labels=ids[1:] + [-100], truncated=False, full_length=n)
        )
    rows = pack(samples, length)[: max(1, TOKENS // length)]
    batch = PackedCollator(0)(rows)
    return batch, sum(row.length for row in rows)


def build_model(implementation: str, device: Any) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=8192, **MODEL)
    model = LlamaForCausalLM._from_config(config, attn_implementation=implementation)
    return model.to(device)


def has_flex_backward(device: Any) -> bool:
    return bool(device.type == "cuda")


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(model: Any, batch: Any, *, train: bool, device: Any) -> tuple[float, float]:
    """Seconds for one forward (+ backward when ``train``) of ``batch``, and its summed loss."""
    import torch

    from loraplug_causal_lm.compute import loss_sum

    model.zero_grad(set_to_none=True)
    _synchronize(device)
    start = time.perf_counter()
    with torch.set_grad_enabled(train):
        result = loss_sum(model, batch)
        if train:
            result.loss_sum.backward()
    _synchronize(device)
    return time.perf_counter() - start, float(result.loss_sum.detach())


def measure(lengths: list[int], repeats: int, device: Any) -> list[dict[str, Any]]:
    models = {name: build_model(name, device) for name in IMPLEMENTATIONS}
    results = []
    for length in lengths:
        batch, real_tokens = packed_batch(length, seed=length)
        batch.inputs = {k: v.to(device) for k, v in batch.inputs.items()}
        modes = ["forward", "train"]
        for mode in modes:
            times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
            losses: dict[str, float] = {}
            runnable = [
                n
                for n in IMPLEMENTATIONS
                if mode == "forward" or n != "flex_attention" or has_flex_backward(device)
            ]
            for repeat in range(repeats + 1):  # the first round warms up (and compiles flex)
                for name in runnable:
                    seconds, loss = timed(models[name], batch, train=mode == "train", device=device)
                    if repeat:
                        times[name].append(seconds)
                    losses[name] = loss
            if len(losses) == 2:
                a, b = losses.values()
                if abs(a - b) > 1e-4 * abs(a):
                    sys.exit(
                        f"FAIL: packed losses differ between sdpa and flex at length {length}: {a} vs {b}"
                    )
            for name in IMPLEMENTATIONS:
                row: dict[str, Any] = {
                    "length": length,
                    "mode": mode,
                    "implementation": name,
                    "real_tokens": real_tokens,
                }
                if name in runnable:
                    best = min(times[name])
                    row.update(seconds=best, tokens_per_s=real_tokens / best, loss=losses[name])
                else:
                    row["skipped"] = "PyTorch has no FlexAttention backward on this device"
                results.append(row)
                print(json.dumps(row), flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: per length and mode, tokens/s of each implementation and flex's speed-up."""
    lines = [
        "| row length | mode | sdpa, dense mask (tokens/s) | flex, block mask (tokens/s) | flex / sdpa |",
        "|---|---|---|---|---|",
    ]
    keyed = {(r["length"], r["mode"], r["implementation"]): r for r in results}
    for length, mode in sorted({(r["length"], r["mode"]) for r in results}):
        sdpa, flex = keyed[(length, mode, "sdpa")], keyed[(length, mode, "flex_attention")]
        cells = [
            f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "— (no backward here)"
            for r in (sdpa, flex)
        ]
        ratio = f"{flex['tokens_per_s'] / sdpa['tokens_per_s']:.2f}×" if "tokens_per_s" in flex else "—"
        lines.append(f"| {length} | {mode} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/results/packed_attention.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        results = measure(args.lengths, args.repeats, device)
    except LossMismatch as exc:
        sys.exit(f"FAIL: {exc}")
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()})",
        "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "torch": torch.__version__,
        "model": MODEL,
        "tokens_per_measurement": TOKENS,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(results))


if __name__ == "__main__":
    main()
