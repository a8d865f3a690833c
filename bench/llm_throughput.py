"""LoRA fine-tuning throughput: loraplug's defaults against what users would otherwise run.

Four ways to train the same LoRA on the same LLaMA-architecture model (random weights, built from a
config, ~11 M parameters) over the same JSONL of prompt/response pairs with skewed lengths (most
short, a long tail), for one epoch — the same real tokens — at the same learning rate and schedule:

  loraplug   `loraplug run` with its defaults (cleaning, packing where supported)
  hf         transformers Trainer + PEFT, padding per batch (DataCollatorForSeq2Seq): what most users write
  trl        TRL SFTTrainer with packing (best-fit decreasing, padding-free position ids)
  bare       a bare PyTorch + PEFT loop over exactly loraplug's micro-batches: the cost of loraplug's loop
  loraplug-padded   loraplug with packing off and HF's batches of 8 samples: what packing changes

Each setup runs in its own process (so peak memory is its own) and reports non-padding tokens per
second of training, peak memory, and the validation loss after training, measured by one shared
evaluator (mean cross-entropy over response tokens of the same held-out samples, unpacked).

    python bench/llm_throughput.py                 # all four, prints the table for docs/performance.md
    python bench/llm_throughput.py --quick         # a smaller run, to check the script
    python bench/llm_throughput.py --setups loraplug bare

This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETUPS = ("loraplug", "hf", "trl", "bare", "loraplug-padded")
T = TypeVar("T", bound="Timer")
MAX_LENGTH = 256
LR = 2e-3
#: The model's weights and the data never change; --seed changes the LoRA initialisation and the data order.
DATA_SEED = 0
seed = 0
#: Samples per padded micro-batch (hf) and packed rows per micro-batch (loraplug, trl, bare): about the
#: same real tokens per optimizer step (8 samples of ~60 tokens ≈ two 256-token rows).
PADDED_BATCH = 8
PACKED_BATCH = 2
MODEL = {
    "hidden_size": 320,
    "intermediate_size": 1024,
    "num_hidden_layers": 8,
    "num_attention_heads": 5,
    "num_key_value_heads": 1,
    "max_position_embeddings": MAX_LENGTH,
    "tie_word_embeddings": False,
}
WORDS = [
    "rain",
    "sun",
    "wind",
    "snow",
    "fog",
    "cloud",
    "storm",
    "mild",
    "cold",
    "warm",
    "dry",
    "wet",
    "calm",
    "gust",
    "hail",
    "sleet",
    "frost",
    "dawn",
    "dusk",
    "haze",
]


# --- the shared inputs -----------------------------------------------------------------------------


def make_rows(count: int, rng: random.Random) -> list[dict[str, str]]:
    """Prompt/response pairs whose response is a function of the prompt; lengths log-normal (long tail)."""
    rows = []
    for i in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
        repeats = max(1, min(12, int(rng.lognormvariate(0.4, 0.8))))
        prompt = f"#{i} echo {repeats}: {' '.join(words)}"
        response = " | ".join(" ".join(w.upper() for w in words) for _ in range(repeats))
        rows.append({"prompt": prompt, "response": response})
    return rows


def prepare_inputs(work: Path, train_count: int, val_count: int) -> dict[str, Any]:
    """The model directory and the data files, written once for all setups."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraplug_causal_lm.presets import _build_tokenizer

    tokenizer = _build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **MODEL,
    )  # fmt: skip
    torch.manual_seed(DATA_SEED)
    model = LlamaForCausalLM(config)
    model_dir = work / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    rng = random.Random(DATA_SEED)
    rows = make_rows(train_count + val_count, rng)
    for name, part in (("train", rows[:train_count]), ("val", rows[train_count:])):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    return {"parameters": sum(p.numel() for p in model.parameters())}


def load_model(work: Path) -> tuple[Any, Any]:
    """The base model and tokenizer with loraplug's default LoRA attached through PEFT."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loraplug_causal_lm.model import lora_config
    from loraplug_causal_lm.options import LoraOptions

    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(
        work / "model", dtype=torch.float32, attn_implementation="sdpa"
    )
    torch.manual_seed(seed)
    return get_peft_model(model, lora_config(LoraOptions())), tokenizer


def records(path: Path) -> list[dict[str, Any]]:
    from loraplug_causal_lm.jsonl import read_jsonl

    return read_jsonl(path, skip_bad=False)[0]


def validation_loss(model: Any, tokenizer: Any, work: Path) -> float:
    """Mean cross-entropy per response token over the held-out samples; the same code for every setup."""
    import torch

    from loraplug.training.batches import move_to
    from loraplug_causal_lm.compute import loss_sum
    from loraplug_causal_lm.encode import Encoder, PadCollator

    encoder = Encoder(tokenizer, max_length=MAX_LENGTH, train_on_prompt=False)
    samples = [encoder.encode(r) for r in records(work / "val.jsonl")]
    collate = PadCollator(tokenizer.pad_token_id)
    model.eval()
    on = next(model.parameters()).device  # wherever the setup left it (HF Trainer moves it to CUDA)
    total, targets = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(samples), 8):
            result = loss_sum(model, move_to(collate(samples[start : start + 8]), on))
            total += float(result.loss_sum)
            targets += result.num_targets
    return total / targets


def hf_labelled(tokenizer: Any, work: Path) -> list[dict[str, list[int]]]:
    """The training samples as HF models take them: labels aligned with input_ids, -100 on the prompt."""
    from loraplug_causal_lm.encode import IGNORE, Encoder

    encoder = Encoder(tokenizer, max_length=MAX_LENGTH, train_on_prompt=False)
    out = []
    for record in records(work / "train.jsonl"):
        sample = encoder.encode(record)  # loraplug's labels are shifted by one; HF shifts inside the model
        out.append({"input_ids": sample.input_ids, "labels": [IGNORE, *sample.labels[:-1]]})
    return out


class Timer:
    """Wall-clock and CPU seconds (all threads of this process) of a block.

    CPU seconds are the steadier figure on a shared machine: another user's load slows the wall clock
    of every setup differently, but changes the CPU work of a step much less.
    """

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        _synchronize()  # CUDA kernels still queued belong to the timed block
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


@contextmanager
def timing_training(timer: T) -> Iterator[T]:
    """``timer`` around loraplug's training loop (``TrainingLoop.run``) in the runs started in the block,
    so that the figures leave out loading, preparing and exporting."""
    from loraplug.training.loop import TrainingLoop

    untimed = TrainingLoop.run

    def timed(self: Any, **kwargs: Any) -> Any:
        with timer:
            return untimed(self, **kwargs)

    TrainingLoop.run = timed  # type: ignore[method-assign]
    try:
        yield timer
    finally:
        TrainingLoop.run = untimed  # type: ignore[method-assign]


def device() -> Any:
    """Where the setups that do not place the model themselves (bare loop, shared evaluator) run."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mib() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the four setups -----------------------------------------------------------------------------


def run_loraplug(work: Path, *, packing: bool = True) -> dict[str, Any]:
    from rich.console import Console

    from loraplug.pipeline import load_run
    from loraplug.plugins import PluginHost
    from loraplug.recipe import load_recipe
    from loraplug.run import execute
    from loraplug.testing import write_recipe

    recipe_path = write_recipe(
        work / "loraplug.toml",
        {
            "run": {"name": "bench", "output_dir": str(work / "runs"), "seed": seed},
            "data": {"kind": "jsonl", "path": str(work / "train.jsonl")},
            "model": {
                "kind": "causal-lm",
                "pretrained": str(work / "model"),
                "max_length": MAX_LENGTH,
                "attn_implementation": "sdpa",
                **({} if packing else {"packing": False}),
            },
            "adapter": {"kind": "lora"},
            "train": {
                "lr": LR,
                "epochs": 1,
                "batch_size": PACKED_BATCH if packing else PADDED_BATCH,
                "log_every_n_steps": 1000,
            },
        },
    )
    host = PluginHost.load()
    console = Console(quiet=True)
    with timing_training(Timer()) as timer:
        outcome = execute(load_recipe(recipe_path, host), host, console=console, overwrite=True)
    _, _, model = load_run(outcome.run_dir, host, console)
    return {
        "tokens": round(outcome.tokens_per_second * outcome.seconds),
        "seconds": timer.wall,
        "cpu_seconds": timer.cpu,
        "steps": outcome.steps,
        "val_loss": validation_loss(model.module, model.components["tokenizer"], work),
        "notes": ", ".join(f"{k} {v}" for k, v in outcome.data_summary.items()),
    }


def run_hf(work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    model, tokenizer = load_model(work)
    dataset = Dataset.from_list(hf_labelled(tokenizer, work))
    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=PADDED_BATCH, learning_rate=LR, num_train_epochs=1,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1000,
        save_strategy="no", report_to="none", seed=seed, dataloader_num_workers=0, bf16=False, fp16=False,
    )  # fmt: skip
    pad_per_batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    computed = 0

    def collator(features: list[dict[str, Any]]) -> Any:
        nonlocal computed
        batch = pad_per_batch(features)
        computed += batch["input_ids"].numel()
        return batch

    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    with Timer() as timer:
        trainer.train()
    tokens = sum(len(row["input_ids"]) for row in dataset)
    return {
        "notes": f"{1 - tokens / computed:.0%} of the computed positions are padding",
        "tokens": tokens,
        "seconds": timer.wall,
        "cpu_seconds": timer.cpu,
        "steps": trainer.state.global_step,
        "val_loss": validation_loss(model, tokenizer, work),
    }


def run_trl(work: Path) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_model(work)
    rows = [
        {
            "prompt": [m for m in r["messages"] if m["role"] != "assistant"],
            "completion": [m for m in r["messages"] if m["role"] == "assistant"],
        }
        for r in records(work / "train.jsonl")
    ]
    args = SFTConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=PACKED_BATCH, learning_rate=LR, num_train_epochs=1,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1000,
        save_strategy="no", report_to="none", seed=seed, max_length=MAX_LENGTH, packing=True, dataloader_num_workers=0,
        bf16=False, fp16=False,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    with Timer() as timer:
        trainer.train()
    return {
        "tokens": tokens,
        "seconds": timer.wall,
        "cpu_seconds": timer.cpu,
        "steps": trainer.state.global_step,
        "val_loss": validation_loss(model, tokenizer, work),
        "notes": f"{len(rows)} samples in {len(trainer.train_dataset)} packed rows",
    }


def run_bare(work: Path) -> dict[str, Any]:
    """The loop of loraplug.training.loop without accelerate, hooks, logging or progress: same batches,
    same optimizer and schedule, same loss."""
    import torch

    from loraplug import DataBundle, ModelBundle, RunContext
    from loraplug.recipe.sections import TrainSection
    from loraplug.training.batches import MicroBatches, move_to
    from loraplug.training.optim import build_optimizer, build_scheduler
    from loraplug_causal_lm.compute import loss_sum
    from loraplug_causal_lm.options import CausalLMOptions
    from loraplug_causal_lm.prepare import prepare

    torch.manual_seed(seed)
    model, tokenizer = load_model(work)
    bundle = ModelBundle(kind="causal-lm", module=model, components={"tokenizer": tokenizer})
    ctx = RunContext(recipe=None, run_dir=work, cache_dir=work, seed=seed, info=lambda m: None)  # type: ignore[arg-type]
    options = CausalLMOptions(pretrained=str(work / "model"), max_length=MAX_LENGTH)
    prepared = prepare(bundle, options, DataBundle(train=records(work / "train.jsonl")), ctx)
    cfg = TrainSection(lr=LR, epochs=1, batch_size=PACKED_BATCH)
    batches = MicroBatches(prepared, batch_size=PACKED_BATCH, seed=seed, rank=0, world=1, num_workers=0)
    steps = math.ceil(batches.per_epoch() or 0)
    model.to(device())  # as accelerate does for loraplug
    optimizer = build_optimizer(model, cfg, {}, device=device())
    scheduler = build_scheduler(optimizer, cfg, steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.train()
    tokens = 0
    stream = batches.iterate()
    with Timer() as timer:
        for _ in range(steps):
            batch = move_to(next(stream)[1], device())
            result = loss_sum(model, batch)
            (result.loss_sum / result.num_targets).backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += batch.num_tokens
    return {
        "tokens": tokens,
        "seconds": timer.wall,
        "cpu_seconds": timer.cpu,
        "steps": steps,
        "val_loss": validation_loss(model, tokenizer, work),
    }


RUNNERS = {
    "loraplug": run_loraplug,
    "hf": run_hf,
    "trl": run_trl,
    "bare": run_bare,
    "loraplug-padded": lambda work: run_loraplug(work, packing=False),
}


# --- the driver ----------------------------------------------------------------------------------


def machine(
    packages: tuple[str, ...] = ("torch", "transformers", "peft", "trl", "accelerate", "datasets"),
) -> dict[str, Any]:
    """The device, CPUs, load and the versions of ``packages`` (bench/llm_memory.py reports them too)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "?"
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU: {cpu}",
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "versions": versions,
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """The Markdown table of docs/performance.md; ratios against HF Trainer, TRL and the bare loop."""

    def ratio(name: str, key: str, base: str) -> str:
        return f"{results[name][key] / results[base][key]:.2f}×" if base in results else "—"

    lines = [
        "| setup | real tokens | steps | tokens/s (wall) | tokens/CPU-s | vs HF (wall, CPU) | vs TRL (wall, CPU) | peak RSS MiB | val loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['tokens']:,} | {r['steps']} | {r['tokens_per_second']:,.0f} | {r['tokens_per_cpu_second']:,.0f} | "
            f"{ratio(name, 'tokens_per_second', 'hf')}, {ratio(name, 'tokens_per_cpu_second', 'hf')} | "
            f"{ratio(name, 'tokens_per_second', 'trl')}, {ratio(name, 'tokens_per_cpu_second', 'trl')} | "
            f"{r['peak_memory_mib']:,.0f} | {r['val_loss']:.5f} |"
        )
    lines.append("")
    lines += [f"- {name}: {r['notes']}" for name, r in results.items() if r.get("notes")]
    if "bare" in results and "loraplug" in results:
        ours, bare = results["loraplug"], results["bare"]
        lines.append(
            f"\nloraplug's loop against the bare loop on the same {ours['steps']} micro-batches: "
            f"{ours['seconds'] / bare['seconds'] - 1:+.1%} wall time, {ours['cpu_seconds'] / bare['cpu_seconds'] - 1:+.1%} CPU time"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", nargs="+", choices=SETUPS, default=list(SETUPS))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="24 training samples instead of 120: checks the script, not the numbers.",
    )
    parser.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the LoRA initialisation and the data order (the data and model stay).",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="Run every setup this many times, interleaved; the best round counts.",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per setup. 1 (the default) makes CPU seconds a steady measure on a shared machine: "
        "no thread spins waiting for another that was descheduled.",
    )  # fmt: skip
    parser.add_argument("--run", choices=SETUPS, help=argparse.SUPPRESS)  # one setup, in this process
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    global seed
    seed = args.seed
    if args.run:
        import torch

        torch.set_num_threads(args.threads)
        result = RUNNERS[args.run](args.work)
        result["tokens_per_second"] = result["tokens"] / result["seconds"]
        result["tokens_per_cpu_second"] = result["tokens"] / result["cpu_seconds"]
        result["peak_memory_mib"] = peak_memory_mib()
        print("RESULT " + json.dumps(result))
        return

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory(prefix="loraplug-bench-") as tmp:
        work = Path(tmp)
        info = prepare_inputs(work, 24 if args.quick else 120, 8 if args.quick else 32)
        model, tokenizer = load_model(work)
        info["val_loss_before"] = validation_loss(model, tokenizer, work)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in args.setups}
        for round_index in range(args.rounds):
            for name in args.setups if round_index % 2 == 0 else reversed(args.setups):
                command = [
                    sys.executable,
                    __file__,
                    "--run",
                    name,
                    "--work",
                    str(work),
                    "--threads",
                    str(args.threads),
                    "--seed",
                    str(seed),
                ]
                proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.exit(f"setup {name} failed:\n{proc.stderr[-4000:]}")
                result = json.loads(line.removeprefix("RESULT "))
                rounds[name].append(result)
                print(f"round {round_index + 1} {name}: {result['tokens_per_cpu_second']:,.0f} tokens/CPU-s, "
                      f"{result['tokens_per_second']:,.0f} tokens/s, val loss {result['val_loss']:.5f}", flush=True)  # fmt: skip
        results = {name: max(runs, key=lambda r: r["tokens_per_cpu_second"]) for name, runs in rounds.items()}
        for name, runs in rounds.items():
            results[name]["cpu_rate_spread"] = [round(r["tokens_per_cpu_second"]) for r in runs]
    report = {
        "machine": machine(),
        "model_parameters": info["parameters"],
        "threads": args.threads,
        "rounds": args.rounds,
        "results": results,
    }
    print()
    print(json.dumps(report["machine"], indent=2))
    print(
        f"model: {info['parameters'] / 1e6:.1f} M parameters; max_length {MAX_LENGTH}; lr {LR}; {args.threads} thread(s); "
        f"seed {seed}; best of {args.rounds} round(s); validation loss before training {info['val_loss_before']:.5f}"
    )
    print(table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
