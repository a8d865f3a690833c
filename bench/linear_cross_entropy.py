"""The output head and its loss alone, three ways: full logits, loraplug's checkpointed chunks, torch's
fused ``torch.nn.functional.linear_cross_entropy`` (torch 2.13+).

Llama 3's vocabulary (128,256 words) and a head 128 wide, as in bench/llm_memory.py; ``--tokens`` rows of
hidden states with a target each, float32, one forward and backward after a warm-up one. Each way runs
in a fresh process, so its peak resident set is its own; the loss and both gradients (hidden states and
head weight) are compared with the full logits'.

    python bench/linear_cross_entropy.py                        # all ways, 2,048 tokens
    python bench/linear_cross_entropy.py --ways torch:512 chunks:523

Ways: ``plain``; ``chunks:N`` (loraplug's path, N tokens per chunk); ``torch:N`` (reduction "sum",
N rows per chunk); ``torch-none:N`` (reduction "none", as per-token log-probabilities need);
``torch-auto`` (torch's own chunk size heuristic). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOCAB, WIDTH = 128_256, 128
WAYS = ["plain", "chunks:523", "torch:523", "torch:256", "torch-none:523", "torch-auto"]


def loss(way: str, hidden, weight, targets):  # type: ignore[no-untyped-def]
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    name, _, size = way.partition(":")
    if name == "plain":
        return F.cross_entropy(F.linear(hidden, weight), targets, reduction="sum")
    if name == "chunks":
        n = int(size)

        def part(h, y):  # type: ignore[no-untyped-def]
            return F.cross_entropy(F.linear(h, weight), y, reduction="sum")

        parts = [checkpoint(part, hidden[s : s + n], targets[s : s + n], use_reentrant=False)
                 for s in range(0, len(targets), n)]  # fmt: skip
        return torch.stack(parts).sum()
    options = (torch.nn.LinearCrossEntropyOptions() if name == "torch-auto"
               else torch.nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=int(size)))  # fmt: skip
    reduction = "none" if name == "torch-none" else "sum"
    out = F.linear_cross_entropy(hidden, weight, targets, reduction=reduction, options=options)
    return out.sum() if reduction == "none" else out


def one(way: str, tokens: int, out: Path) -> dict[str, float]:
    import torch

    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(VOCAB, WIDTH, generator=generator) * 0.02).requires_grad_(True)
    start = torch.randn(tokens, WIDTH, generator=generator)
    targets = torch.randint(0, VOCAB, (tokens,), generator=generator)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(2):  # the first is a warm-up
        weight.grad = None
        hidden = start.clone().requires_grad_(True)
        wall, cpu = time.perf_counter(), time.process_time()
        value = loss(way, hidden, weight, targets)
        value.backward()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    torch.save((value.detach(), hidden.grad, weight.grad), out)
    added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"wall_s": wall, "cpu_s": cpu, "added_peak_mib": added}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ways", nargs="+", default=WAYS)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.run:
        print("RESULT " + json.dumps(one(args.run, args.tokens, args.file)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        ways = ["plain", *(w for w in args.ways if w != "plain")]  # the reference first
        for way in ways:
            file = Path(tmp) / f"{way.replace(':', '-')}.pt"
            command = [sys.executable, __file__, "--run", way, "--file", str(file),
                       "--tokens", str(args.tokens), "--threads", str(args.threads)]  # fmt: skip
            proc = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout.split("RESULT ", 1)[1])
            value, hidden_grad, weight_grad = torch.load(file)
            plain = torch.load(Path(tmp) / "plain.pt")

            def relative(a: torch.Tensor, b: torch.Tensor) -> float:
                return float((a - b).abs().max() / b.abs().max())

            print(f"{way:15s} cpu {result['cpu_s']:6.2f} s  wall {result['wall_s']:6.2f} s  "
                  f"added peak {result['added_peak_mib']:6.0f} MiB  vs plain: loss {relative(value, plain[0]):.1e}, "
                  f"hidden grad {relative(hidden_grad, plain[1]):.1e}, weight grad {relative(weight_grad, plain[2]):.1e}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
