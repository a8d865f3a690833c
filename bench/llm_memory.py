"""Memory of the causal-LM loss with a 128k vocabulary: loraplug's chunked loss, its full logits, HF Trainer.

A LLaMA-shaped model that is tiny in width (hidden 128, 2 layers, random weights from a config) but has
Llama 3's vocabulary of 128,256 words, trained with LoRA on rows of one long sample (a short prompt and a
long response, so nearly every token is a target). Everything but the output head is small, so what the
figures show is the logits: their float32 size is 4 × vocabulary × tokens bytes (2 GiB for 4,096 tokens).

  loraplug         `loraplug run`, model.loss_chunk_tokens = "auto" (the default): chunks of 523 tokens,
                   by torch.nn.functional.linear_cross_entropy where torch has it (2.13+; Liger on CUDA
                   where liger-kernel is installed; the run's log names the kernel)
  loraplug-chunks  model.loss_chunk_tokens = 523: loraplug's checkpointed chunks (head run again in the backward)
  loraplug-plain   the same with model.loss_chunk_tokens = 0: the full logits
  hf               transformers Trainer + PEFT on the same token ids and labels (its own loss)

Each setup and row length runs in a fresh process (so its peak is its own) for --steps optimizer steps of
one row each. Reported: the process's peak memory (CPU: peak RSS, from the kernel; CUDA:
torch.cuda.max_memory_allocated) and how much of it training added over the process before training
(model, data, imports), tokens per second of the training call, and the first step's loss — the base
model's (LoRA's B starts at zero), so the three setups must agree on it.

    python bench/llm_memory.py                       # lengths 2048 and 4096, prints the table for docs/performance.md
    python bench/llm_memory.py --lengths 1024 --steps 1   # a quick check of the script
    python bench/llm_memory.py --lengths 8192 16384  # on a GPU

This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llm_throughput import WORDS, Timer, machine, peak_memory_mib, timing_training

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETUPS = ("loraplug", "loraplug-chunks", "loraplug-plain", "hf")
#: model.loss_chunk_tokens of each loraplug setup (523: what "auto" picks for this vocabulary).
CHUNK_SETTINGS: dict[str, int | str] = {"loraplug": "auto", "loraplug-chunks": 523, "loraplug-plain": 0}
#: Llama 3's vocabulary.
VOCAB = 128_256
MODEL = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}
LR = 1e-4
PROMPT = "Repeat the weather report:"


# --- the shared inputs -----------------------------------------------------------------------------


def prepare_inputs(work: Path, length: int) -> None:
    """The model (random weights, seeded) and a JSONL of rows of about ``length`` tokens (byte-level)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraplug_causal_lm.presets import CHAT_TEMPLATE, SPECIAL_TOKENS
    from loraplug_hf import byte_level_tokenizer

    tokenizer = byte_level_tokenizer(
        SPECIAL_TOKENS, bos="<s>", eos="</s>", pad="<pad>", chat_template=CHAT_TEMPLATE
    )
    config = LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=max(length, 1024), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **MODEL,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    rows = []
    for i in range(4):
        response = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(length))[: length - len(PROMPT) - 16]
        rows.append({"prompt": f"{PROMPT} {i}", "response": response})
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def encoded(work: Path, length: int) -> list[Any]:
    from transformers import AutoTokenizer

    from loraplug_causal_lm.encode import Encoder
    from loraplug_causal_lm.jsonl import read_jsonl

    encoder = Encoder(AutoTokenizer.from_pretrained(work / "model"), max_length=length, train_on_prompt=False)
    return [encoder.encode(record) for record in read_jsonl(work / "train.jsonl", skip_bad=False)[0]]


# --- measuring -------------------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def current_mib() -> float:
    """Memory in use now: CUDA memory allocated, or this process's resident set."""
    import psutil
    import torch

    if _cuda():
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() / 2**20
    return psutil.Process().memory_info().rss / 2**20


class Training(Timer):
    """Times the training call (wall and CPU seconds) and records the memory in use just before it."""

    def __enter__(self) -> Training:
        import torch

        if _cuda():
            torch.cuda.reset_peak_memory_stats()
        self.before = current_mib()
        super().__enter__()
        return self


# --- the setups ----------------------------------------------------------------------------------


def run_loraplug(work: Path, length: int, steps: int, setup: str) -> dict[str, Any]:
    from rich.console import Console

    from loraplug.plugins import PluginHost
    from loraplug.recipe import load_recipe
    from loraplug.run import execute
    from loraplug.testing import write_recipe

    recipe = write_recipe(
        work / "loraplug.toml",
        {
            "run": {"name": setup, "output_dir": str(work / "runs"), "seed": 0},
            "data": {"kind": "jsonl", "path": str(work / "train.jsonl")},
            "model": {
                "kind": "causal-lm", "pretrained": str(work / "model"), "max_length": length, "packing": False,
                "attn_implementation": "sdpa", "loss_chunk_tokens": CHUNK_SETTINGS[setup],
            },
            "adapter": {"kind": "lora"},
            "train": {"lr": LR, "max_steps": steps, "batch_size": 1, "log_every_n_steps": 1, "max_grad_norm": 0},
            "eval": {"sample_prompts": []},
            "export": [],
        },
    )  # fmt: skip
    host = PluginHost.load()
    log = io.StringIO()
    with timing_training(Training()) as training:
        outcome = execute(
            load_recipe(recipe, host), host, console=Console(file=log, width=10_000), overwrite=True
        )
    lines = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(line for line in lines if "loss" in line and line.get("split", "train") == "train")
    return {
        "tokens": round(outcome.tokens_per_second * outcome.seconds),
        "steps": outcome.steps,
        "seconds": training.wall,
        "cpu_seconds": training.cpu,
        "before_mib": training.before,
        "first_loss": first["loss"],
        # the run's own line naming the loss kernel (none where the full logits are computed)
        "loss_path": next((x for x in log.getvalue().splitlines() if x.startswith("loss: ")), "full logits"),
    }


def run_hf(work: Path, length: int, steps: int) -> dict[str, Any]:
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from loraplug_causal_lm.encode import IGNORE
    from loraplug_causal_lm.model import lora_config
    from loraplug_causal_lm.options import LoraOptions

    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    base = AutoModelForCausalLM.from_pretrained(
        work / "model", dtype=torch.float32, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    model = get_peft_model(base, lora_config(LoraOptions()))
    # loraplug's labels are shifted by one; HF shifts inside its loss
    rows = [{"input_ids": s.input_ids, "labels": [IGNORE, *s.labels[:-1]]} for s in encoded(work, length)]
    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=1, learning_rate=LR, max_steps=steps,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, logging_steps=1,
        save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0, bf16=False, fp16=False,
    )  # fmt: skip
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    with Training() as training:
        trainer.train()
    first = next(entry for entry in trainer.state.log_history if "loss" in entry)
    # Trainer logs the mean per target token; loraplug does too
    return {
        "tokens": sum(len(rows[i % len(rows)]["input_ids"]) for i in range(steps)),
        "steps": trainer.state.global_step,
        "seconds": training.wall,
        "cpu_seconds": training.cpu,
        "before_mib": training.before,
        "first_loss": first["loss"],
        "loss_path": "transformers' loss on the full logits",
    }


def run(setup: str, work: Path, length: int, steps: int) -> dict[str, Any]:
    if setup == "hf":
        return run_hf(work, length, steps)
    return run_loraplug(work, length, steps, setup)


# --- the driver ----------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| setup | tokens per row | peak MiB | added by training, MiB | tokens/s (wall) | tokens/CPU-s | first-step loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['setup']} | {r['length']:,} | {r['peak_mib']:,.0f} | {r['peak_mib'] - r['before_mib']:,.0f} | "
            f"{r['tokens'] / r['seconds']:,.0f} | {r['tokens'] / r['cpu_seconds']:,.0f} | {r['first_loss']:.6f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument(
        "--lengths", nargs="+", type=int, default=[2048, 4096], help="Tokens per row (and max_length)."
    )
    parser.add_argument("--steps", type=int, default=2, help="Optimizer steps of one row each.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per setup (CPU).")
    parser.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    parser.add_argument("--run", choices=SETUPS, help=argparse.SUPPRESS)  # one setup, in this process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.run:
        import torch

        torch.set_num_threads(args.threads)
        result = run(args.run, args.work, args.lengths[0], args.steps)
        result["peak_mib"] = peak_memory_mib()
        print("RESULT " + json.dumps(result))
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results = []
    started = time.perf_counter()
    for length in args.lengths:
        with tempfile.TemporaryDirectory(prefix="loraplug-bench-") as tmp:
            work = Path(tmp)
            prepare_inputs(work, length)
            for name in args.setups:
                command = [sys.executable, __file__, "--run", name, "--work", str(work), "--lengths", str(length),
                           "--steps", str(args.steps), "--threads", str(args.threads)]  # fmt: skip
                proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.exit(f"setup {name} at {length} tokens failed:\n{proc.stderr[-4000:]}")
                result = {"setup": name, "length": length, **json.loads(line.removeprefix("RESULT "))}
                results.append(result)
                print(f"{name} {length}: peak {result['peak_mib']:,.0f} MiB, {result['tokens'] / result['seconds']:,.0f} tokens/s, "
                      f"{result['tokens'] / result['cpu_seconds']:,.0f} tokens/CPU-s, first loss {result['first_loss']:.6f}; "
                      f"{result['loss_path']}", flush=True)  # fmt: skip
    report = {
        "machine": {
            **machine(("torch", "transformers", "peft", "accelerate")),
            "torch_threads": args.threads,
        },
        "vocab": VOCAB,
        "model": MODEL,
        "steps": args.steps,
        "results": results,
    }
    print()
    print(json.dumps(report["machine"], indent=2))
    print(
        f"vocabulary {VOCAB:,}; {args.steps} step(s) of one row; {time.perf_counter() - started:.0f} s in all\n"
    )
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
