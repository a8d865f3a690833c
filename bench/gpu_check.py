"""The prepared GPU check: loraplug end to end on one CUDA GPU, in a few minutes, with a summary.

    python bench/gpu_check.py --out DIR            # on a machine with one CUDA GPU (a few minutes)
    python bench/gpu_check.py --out DIR --cpu-dry-run   # anywhere: the CPU-runnable parts (CI runs this)

It writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (rewritten after every part, so a run cut
short still leaves what it measured) and exits non-zero, naming what failed, on any mismatch. Parts:

  a1  the quickstart recipe (tiny LLaMA) through the public API in bf16 and in fp16 with loss scaling:
      the run finishes, the loss falls, every export passes its parity check (run inside the export),
      fused AdamW is the optimizer, the fp16 checkpoint holds the GradScaler state
  a2  resume on CUDA through the CLI: a run SIGKILLed after step 100 continues from its step-80 checkpoint
      and ends where an uninterrupted run ends
  a3  ``batch_size = "auto"`` against CUDA memory on a ~1B-parameter model: the chosen micro-batch's measured
      peak fits the budget, the next divisor's does not, and training with it stays inside the budget
  b   the tiny Stable Diffusion recipe with latent and text-encoder caching and the VAE and text encoder
      offloaded to the CPU; the diffusers and kohya exports pass parity
  c   throughput of a ~1.1B-parameter LLaMA-shaped model (TinyLlama-1.1B's shape, random weights built from
      a config, never downloaded) with LoRA in bf16, loraplug against transformers' Trainer + PEFT on the
      same data, each in its own process: real tokens/s, MFU, peak ``torch.cuda.max_memory_allocated``
  d   packing: the loss of documents packed into one row (4-D block-diagonal mask, SDPA) equals the loss
      of the same documents alone, on CUDA, in float32 and bf16; flash-attention 2 where installed
  e   QLoRA nf4 (bitsandbytes) on the quickstart, where bitsandbytes imports
  f   the fused linear cross-entropy of ``model.loss_chunk_tokens = "auto"``: Liger Kernel's (where
      liger-kernel is installed) against the full logits on a LoRA'd LLaMA with a 128k vocabulary, 2 rows
      of 4,096 tokens, in float32 and under bf16 autocast: loss, every gradient, peak memory; on the CPU
      (dry run too) torch's ``linear_cross_entropy`` against the full logits, and Liger never chosen

With ``--cpu-dry-run`` (no CUDA needed) every recipe and override the GPU parts use is validated, the
throughput children and the packing comparison run on a tiny model on the CPU, and each CUDA part is
recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

#: The ~1.1B model of parts a3, c and d: TinyLlama-1.1B's shape, random weights.
LLAMA_1B: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}
#: The same architecture, small enough for the CPU dry run.
LLAMA_TINY: dict[str, Any] = {**LLAMA_1B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512}  # fmt: skip
#: Dense bf16 matrix rate by NVIDIA's datasheets (SXM parts): the MFU denominator.
DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
BF16_UNIT_ROUNDOFF = 2.0**-8


class Skip(Exception):
    """The part (or the rest of it) cannot run here; the message says why."""


# --- results --------------------------------------------------------------------------------------


@dataclass
class Part:
    key: str
    title: str
    status: str = "passed"  # passed | failed | skipped
    reason: str | None = None  # why (the rest of) the part was skipped
    error: str | None = None  # what broke it, when it raised
    checks: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record one comparison; a false one fails the part (the part goes on, to report the rest)."""
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        if not ok:
            self.status = "failed"
        return bool(ok)

    def skip(self, reason: str) -> None:
        self.reason = reason
        if self.status != "failed":
            self.status = "skipped"

    @property
    def failures(self) -> list[str]:
        out = [f"{c['name']}: {c['detail']}" for c in self.checks if not c["ok"]]
        return [*out, self.error] if self.error else out


@dataclass
class Check:
    """What every part gets: where to work, how long is left, and whether this is the CPU dry run."""

    out: Path
    work: Path
    dry: bool
    deadline: float
    leak_packing: bool = False
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def log(self, message: str) -> None:
        print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- helpers shared by the parts -------------------------------------------------------------------


def cuda_reason() -> str | None:
    """Why CUDA parts cannot run here, or ``None``."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def require_cuda(ctx: Check) -> None:
    if ctx.dry:
        raise Skip(
            "CPU dry run: CUDA part not run (no CUDA device); its recipes and overrides were validated"
        )
    reason = cuda_reason()
    if reason and not os.environ.get(
        "GPU_CHECK_ON_CPU"
    ):  # developing this script: run the parts on the CPU anyway
        raise Skip(reason)


def host() -> Any:
    from loraplug.plugins import PluginHost

    return PluginHost.load()


def quickstart_overrides(runs: Path, name: str, *extra: str) -> list[str]:
    return [
        f'run.output_dir="{runs}"', f"run.name={name}", "train.max_steps=120", "train.save_every_n_steps=40",
        "train.log_every_n_steps=20", "eval.every_n_steps=60", "eval.generate_samples=8", *extra,
    ]  # fmt: skip


@contextmanager
def recorded_optimizers() -> Iterator[list[Any]]:
    """Every optimizer the training loop builds while the block runs (to see whether it is fused)."""
    from loraplug.training import loop

    built: list[Any] = []
    original = loop.build_optimizer

    def recording(*args: Any, **kwargs: Any) -> Any:
        optimizer = original(*args, **kwargs)
        built.append(optimizer)
        return optimizer

    loop.build_optimizer = recording  # type: ignore[assignment]
    try:
        yield built
    finally:
        loop.build_optimizer = original  # type: ignore[assignment]


def run_in_process(recipe_path: Path, overrides: list[str]) -> tuple[Any, list[Any]]:
    """``loraplug run`` through the public API; returns the outcome and the optimizers built."""
    from rich.console import Console

    from loraplug.recipe import load_recipe
    from loraplug.run import execute

    plugins = host()
    recipe = load_recipe(recipe_path, plugins, overrides)
    with recorded_optimizers() as optimizers:
        outcome = execute(
            recipe, plugins, console=Console(stderr=True, highlight=False, width=140), overwrite=True
        )
    return outcome, optimizers


def cli(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The real ``loraplug`` command in a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-m", "loraplug", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})}, check=False,
    )  # fmt: skip
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    return proc


def metric_lines(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [
        (m["step"], m["loss"]) for m in metric_lines(run_dir) if m.get("split") == "train" and "loss" in m
    ]


def val_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [
        (m["step"], m["val_loss"])
        for m in metric_lines(run_dir)
        if m.get("split") == "eval" and "val_loss" in m
    ]


def run_json(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())


def export_figures(run_dir: Path) -> dict[str, Any]:
    figures = {}
    for manifest in sorted((run_dir / "exports").glob("*/export.json")):
        figures[manifest.parent.name] = json.loads(manifest.read_text()).get("figures", {})
    return figures


def check_run(
    part: Part, label: str, outcome: Any, steps: int, *, optimizers: list[Any] | None = None
) -> None:
    """What every finished run must show: all steps, a falling loss, exports whose parity passed."""
    run_dir = outcome.run_dir
    part.check(f"{label}: ran {steps} steps", outcome.steps == steps, f"{outcome.steps} steps")
    losses = train_losses(run_dir)
    if part.check(f"{label}: training loss logged", len(losses) >= 2, f"{len(losses)} logged losses"):
        first, last = losses[0][1], losses[-1][1]
        part.check(
            f"{label}: training loss falls",
            last < 0.9 * first and math.isfinite(last),
            f"{first:.4f} at step {losses[0][0]} → {last:.4f} at step {losses[-1][0]}",
        )
    vals = val_losses(run_dir)
    if len(vals) >= 2:
        part.check(
            f"{label}: validation loss falls",
            vals[-1][1] < vals[0][1],
            f"{vals[0][1]:.4f} → {vals[-1][1]:.4f}",
        )
    for export in outcome.exports:
        part.check(f"{label}: export {export.name} (parity inside)", export.ok, export.error or "ok")
    if optimizers is not None:
        fused = [bool(o.defaults.get("fused")) for o in optimizers]
        part.check(f"{label}: fused AdamW", bool(fused) and all(fused), f"fused={fused}")
    part.figures[label] = {
        "steps": outcome.steps,
        "seconds": round(outcome.seconds, 2),
        f"{outcome.unit}_per_second": round(outcome.tokens_per_second, 1),
        "train_loss_first_last": [round(losses[0][1], 4), round(losses[-1][1], 4)] if losses else None,
        "val_loss_first_last": [round(vals[0][1], 4), round(vals[-1][1], 4)] if vals else None,
        "exports": export_figures(run_dir),
    }


def release_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else 0.0


# --- a1: the quickstart in bf16 and fp16 ------------------------------------------------------------


def part_quickstart(ctx: Check, part: Part) -> None:
    plugins = host()
    from loraplug.recipe import load_recipe

    runs = ctx.work / "runs"
    plans = {p: quickstart_overrides(runs, p, f"train.mixed_precision={p}") for p in ("bf16", "fp16")}
    for overrides in plans.values():
        load_recipe(RECIPES / "quickstart.toml", plugins, overrides)
    part.check("recipes and overrides validate", True, "quickstart.toml with bf16 and fp16 overrides")
    require_cuda(ctx)
    import torch

    from loraplug.training.state import load_state

    for label, overrides in plans.items():
        release_cuda()
        ctx.log(f"a1: quickstart {label}")
        outcome, optimizers = run_in_process(RECIPES / "quickstart.toml", overrides)
        check_run(part, label, outcome, 120, optimizers=optimizers)
        part.figures[label]["peak_cuda_gib"] = peak_gib()
        on_cuda = [p.is_cuda for o in optimizers for g in o.param_groups for p in g["params"]]
        part.check(
            f"{label}: trained on CUDA",
            bool(on_cuda) and all(on_cuda),
            f"{sum(on_cuda)}/{len(on_cuda)} parameters on CUDA",
        )
        if label == "fp16":
            newest = sorted((outcome.run_dir / "checkpoints").glob("step-*"))[-1]
            scaler = load_state(newest / "optimizer.safetensors").get("scaler")
            scale = float(scaler["scale"]) if scaler and scaler.get("scale") is not None else None
            part.check(
                "fp16: the checkpoint holds the loss scaler",
                scale is not None and scale > 0,
                f"{newest.name}: scale {scale}",
            )
            part.figures[label]["loss_scale"] = scale
        del outcome, optimizers
    part.figures["tf32"] = {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
    }


# --- a2: resume after SIGKILL, through the CLI ------------------------------------------------------


def part_resume(ctx: Check, part: Part) -> None:
    from loraplug.recipe import load_recipe

    runs = ctx.work / "runs"
    overrides = quickstart_overrides(runs, "resumed", "train.mixed_precision=bf16")
    load_recipe(RECIPES / "quickstart.toml", host(), overrides)
    part.check("recipe and overrides validate", True, "quickstart.toml, bf16, checkpoints every 40 steps")
    require_cuda(ctx)
    import torch
    from safetensors.torch import load_file

    reference = runs / "bf16"
    if not (reference / "adapter" / "adapter.safetensors").exists():
        raise Skip("needs part a1's uninterrupted bf16 run as the reference, which did not finish")
    ctx.log("a2: run killed after step 100")
    killed = cli(
        ["run", str(RECIPES / "quickstart.toml"), *overrides, "--overwrite"],
        cwd=ctx.work,
        env={"LORAPLUG_FAULT": "kill:micro=100"},
    )
    part.check(
        "the run was killed (SIGKILL after micro-batch 100)",
        killed.returncode == -signal.SIGKILL,
        f"exit code {killed.returncode}",
    )
    run_dir = runs / "resumed"
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    part.check("checkpoints kept at the kill", kept[-1:] == ["step-00000080"], f"{kept}")
    ctx.log("a2: --resume")
    resumed = cli(["run", str(RECIPES / "quickstart.toml"), *overrides, "--resume"], cwd=ctx.work)
    part.check(
        "--resume finishes",
        resumed.returncode == 0,
        f"exit code {resumed.returncode}: {resumed.stderr.strip()[-500:]}",
    )
    if resumed.returncode != 0:
        return
    status = run_json(run_dir)
    part.check("resumed from step 80 and ran to 120", status.get("resumed_at_step") == 80 and status.get("step") == 120,
               f"resumed_at_step {status.get('resumed_at_step')}, step {status.get('step')}")  # fmt: skip
    part.check(
        "exports after resume pass parity",
        all(e["ok"] for e in status.get("exports", [])),
        json.dumps(status.get("exports")),
    )
    ours, theirs = (
        load_file(str(run_dir / "adapter" / "adapter.safetensors")),
        load_file(str(reference / "adapter" / "adapter.safetensors")),
    )
    part.check(
        "the same adapter tensors as the uninterrupted run",
        ours.keys() == theirs.keys(),
        f"{len(ours)} vs {len(theirs)}",
    )
    diff = max(float((ours[k].float() - theirs[k].float()).abs().max()) for k in ours)
    norm = math.sqrt(sum(float((ours[k].float() - theirs[k].float()).pow(2).sum()) for k in ours))
    scale = math.sqrt(sum(float(theirs[k].float().pow(2).sum()) for k in theirs))
    val_ours, val_theirs = val_losses(run_dir)[-1][1], val_losses(reference)[-1][1]
    # CUDA kernels (attention backward, atomics) are not bitwise deterministic, so an uninterrupted run
    # is not bitwise reproducible either: the resumed run must agree to well inside that noise.
    part.check(
        "final adapter equals the uninterrupted run's (relative L2 < 1e-2)",
        norm / scale < 1e-2,
        f"relative L2 {norm / scale:.2e}, max abs {diff:.2e}",
    )
    part.check("final validation loss equals the uninterrupted run's (relative < 1e-2)", abs(val_ours - val_theirs) / val_theirs < 1e-2,
               f"{val_ours:.5f} vs {val_theirs:.5f}")  # fmt: skip
    part.figures.update({"adapter_max_abs_diff": diff, "adapter_relative_l2": norm / scale, "val_loss_resumed": val_ours,
                         "val_loss_uninterrupted": val_theirs, "bitwise_equal": diff == 0.0, "torch_deterministic": torch.are_deterministic_algorithms_enabled()})  # fmt: skip


# --- the ~1B model and its data (a3, c, d) ----------------------------------------------------------


def on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def llama_config(ctx: Check) -> dict[str, Any]:
    return LLAMA_1B if on_cuda() else LLAMA_TINY


def build_llama(ctx: Check) -> Path:
    """A LLaMA-shaped model with random weights (seeded), saved with the tiny-llama byte tokenizer."""
    if "llama_dir" in ctx.shared:
        return ctx.shared["llama_dir"]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraplug_causal_lm.presets import _build_tokenizer

    tokenizer = _build_tokenizer()
    config = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **llama_config(ctx),
    )
    device = "cuda" if on_cuda() else "cpu"
    target = ctx.work / ("llama-1b" if on_cuda() else "llama-tiny")
    torch.manual_seed(0)
    ctx.log(f"building {target.name} on {device}")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if on_cuda() else torch.float32)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    ctx.shared["llama_dir"] = target
    ctx.shared["llama_parameters"] = sum(p.numel() for p in model.parameters())
    del model
    release_cuda()
    return target


WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "but",
]


def write_documents(path: Path, count: int, max_length: int, seed: int = 0) -> None:
    """Prompt/response documents with skewed lengths (log-normal: most short, a long tail up to max_length)."""
    rng = random.Random(seed)
    median = max(16, max_length // 6)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            chars = int(min(max_length - 24, max(12, rng.lognormvariate(math.log(median), 0.8))))
            text = []
            while sum(len(w) + 1 for w in text) < chars:
                text.append(rng.choice(WORDS))
            handle.write(json.dumps({"prompt": f"doc {i}:", "response": " ".join(text)}) + "\n")


def document_lengths(model_dir: Path, data: Path, max_length: int) -> list[int]:
    from transformers import AutoTokenizer

    from loraplug_causal_lm.encode import Encoder
    from loraplug_causal_lm.jsonl import read_jsonl

    encoder = Encoder(AutoTokenizer.from_pretrained(model_dir), max_length=max_length, train_on_prompt=False)
    return [len(encoder.encode(r).input_ids) for r in read_jsonl(data, skip_bad=False)[0]]


def flop_counts(model_dir: Path, lengths: list[int]) -> dict[str, float]:
    """Per real token: the model FLOPs of one LoRA training step (see MFU in the docstring of part c)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from loraplug_causal_lm.model import lora_config
    from loraplug_causal_lm.options import LoraOptions

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    matmul = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
    )  # lm_head included, embedding not
    with torch.device("meta"):
        lora = sum(
            p.numel()
            for p in get_peft_model(model, lora_config(LoraOptions())).parameters()
            if p.requires_grad
        )
    layers, hidden = config.num_hidden_layers, config.hidden_size
    mean_square = sum(n * n for n in lengths) / sum(
        lengths
    )  # E[n²]/E[n]: attention work per token of a document
    attention = (
        6 * layers * hidden * mean_square
    )  # causal QKᵀ and AV forward (2·d·n² per layer) + backward (twice that)
    return {
        "parameters": total,
        "matmul_parameters": matmul,
        "lora_parameters": lora,
        # forward 2·N, backward 2·N (activation gradients only: the frozen weights get no weight gradients),
        # LoRA's own 6·N_lora, and causal attention within each document
        "flops_per_token": 4 * matmul + 6 * lora + attention,
        "flops_per_token_6n": 6 * total,
        "attention_flops_per_token": attention,
    }


def measured_bf16_tflops() -> float:
    """This GPU's bf16 matrix rate on an 8192³ product (mean of 10 after 3 warm-ups)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    del a, b
    release_cuda()
    return round(rate, 1)


def datasheet_tflops() -> float | None:
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)


# --- the throughput children (each in its own process on CUDA) ----------------------------------------


def window_rates(marks: list[tuple[float, int]]) -> list[float]:
    """Tokens/s of each window between successive (time, tokens so far) marks."""
    return [(t2 - t1) and (n2 - n1) / (t2 - t1) for (t1, n1), (t2, n2) in zip(marks, marks[1:], strict=False)]


def child_loraplug(spec: dict[str, Any]) -> dict[str, Any]:
    """loraplug through the public API; throughput from its own logged windows (the first, warm-up, dropped)."""
    import torch

    from loraplug.testing import write_recipe

    work = Path(spec["work"])
    train: dict[str, Any] = {"lr": 2e-4, "max_steps": spec["steps"], "warmup_steps": 0, "log_every_n_steps": spec["window"],
                             "mixed_precision": spec["precision"], "batch_size": spec["batch_size"]}  # fmt: skip
    if spec["batch_size"] == "auto":
        train.update(
            effective_batch_size=spec["effective_batch_size"], memory_fraction=spec["memory_fraction"]
        )
    recipe = write_recipe(
        work / f"{spec['name']}.toml",
        {
            "run": {"name": spec["name"], "output_dir": str(work / "runs"), "seed": 0},
            "data": {"kind": "jsonl", "path": spec["data"]},
            "model": {
                "kind": "causal-lm",
                "pretrained": spec["model"],
                "dtype": spec["dtype"],
                "max_length": spec["max_length"],
                "attn_implementation": "sdpa",
                "packing": spec["packing"],
            },  # fmt: skip
            "adapter": {"kind": "lora"},
            "train": train,
        },
    )
    from loraplug.training import loop

    untimed, peaks = loop.train, {"before_training": 0.0, "training": 0.0}

    def measured(**kwargs: Any) -> Any:  # the pipeline imports loop.train when it runs
        # The peak of training alone: batch_size = "auto" probes sizes that do not fit before it.
        peaks["before_training"] = peak_gib()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            return untimed(**kwargs)
        finally:
            peaks["training"] = peak_gib()

    loop.train = measured  # type: ignore[assignment]
    try:
        outcome, optimizers = run_in_process(recipe, [])
    finally:
        loop.train = untimed  # type: ignore[assignment]
    rates = [
        m["tokens_per_s"]
        for m in metric_lines(outcome.run_dir)
        if m.get("split") == "train" and "tokens_per_s" in m
    ]
    status = run_json(outcome.run_dir)
    return {
        "steps": outcome.steps,
        "window_tokens_per_s": rates,
        "tokens_per_s": statistics.median(rates[1:] or rates),
        "peak_gib": max(peaks["before_training"], peak_gib()),
        "training_peak_gib": peaks["training"],
        "fused_adamw": all(bool(o.defaults.get("fused")) for o in optimizers),
        "final_loss": outcome.train_loss,
        "data": outcome.data_summary,
        "auto_batch": status.get("auto_batch"),
        "cuda_total_bytes": torch.cuda.get_device_properties(0).total_memory
        if torch.cuda.is_available()
        else None,
    }


def child_hf(spec: dict[str, Any]) -> dict[str, Any]:
    """transformers' Trainer + PEFT as users write it: padding per batch, its default (fused) AdamW."""
    import torch
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from loraplug_causal_lm.encode import IGNORE, Encoder
    from loraplug_causal_lm.jsonl import read_jsonl
    from loraplug_causal_lm.model import lora_config
    from loraplug_causal_lm.options import LoraOptions

    work, model_dir = Path(spec["work"]), spec["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if spec["dtype"] == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = get_peft_model(model, lora_config(LoraOptions()))
    encoder = Encoder(tokenizer, max_length=spec["max_length"], train_on_prompt=False)
    rows = []
    for record in read_jsonl(Path(spec["data"]), skip_bad=False)[0]:
        sample = encoder.encode(record)  # loraplug's labels are shifted by one; HF shifts inside the model
        rows.append({"input_ids": sample.input_ids, "labels": [IGNORE, *sample.labels[:-1]]})
    pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
    batch_tokens: list[int] = []
    positions: list[int] = []

    def collate(features: list[dict[str, Any]]) -> Any:
        batch = pad(features)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        positions.append(batch["input_ids"].numel())
        return batch

    marks: list[tuple[float, int]] = []

    class Windows(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % spec["window"] == 0:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks.append((time.perf_counter(), sum(batch_tokens[: state.global_step])))

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            marks.append((time.perf_counter(), 0))

    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=spec["batch_size"], max_steps=spec["steps"], learning_rate=2e-4,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=10_000, save_strategy="no",
        report_to="none", seed=0, dataloader_num_workers=0, bf16=spec["precision"] == "bf16", remove_unused_columns=False,
        disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[Windows()]
    )
    trainer.train()
    rates = window_rates(marks)
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    return {
        "steps": trainer.state.global_step,
        "window_tokens_per_s": rates,
        "tokens_per_s": statistics.median(rates[1:] or rates),
        "peak_gib": peak_gib(),
        "optimizer": f"{type(optimizer).__name__} ({args.optim})",
        "fused_adamw": bool(getattr(optimizer, "defaults", {}).get("fused")),
        "train_loss_mean": next(
            (h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h), None
        ),  # HF: over the run
        "padding_share": round(1 - sum(batch_tokens) / max(1, sum(positions)), 3),
    }


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"loraplug": child_loraplug, "hf": child_hf}


def run_child(ctx: Check, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One setup in a fresh process on CUDA (its own peak memory); in the dry run, in this process."""
    if ctx.dry:
        return CHILDREN[kind](spec)
    spec_path = ctx.work / f"spec-{spec['name']}.json"
    spec_path.write_text(json.dumps(spec))
    timeout = max(30.0, ctx.remaining - 20)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--spec", str(spec_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    sys.stderr.write(proc.stderr[-4000:])
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(
            f"setup {spec['name']} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}"
        )
    return json.loads(line.removeprefix("RESULT "))


# --- a3: batch_size = "auto" on CUDA memory ---------------------------------------------------------------


def part_auto_batch(ctx: Check, part: Part) -> None:
    from loraplug.recipe import load_recipe
    from loraplug.testing import write_recipe

    probe = write_recipe(ctx.work / "auto-check.toml", {
        "run": {"name": "auto"}, "data": {"kind": "jsonl", "path": str(RECIPES / "data" / "weather.jsonl")},
        "model": {"kind": "causal-lm", "pretrained": "tiny-llama"}, "adapter": {"kind": "lora"},
        "train": {"batch_size": "auto", "effective_batch_size": 64, "memory_fraction": 0.1, "mixed_precision": "bf16"},
    })  # fmt: skip
    load_recipe(probe, host())
    part.check(
        "the auto-batch recipe validates",
        True,
        'batch_size = "auto", effective_batch_size 64, memory_fraction 0.1',
    )
    require_cuda(ctx)
    model_dir = build_llama(ctx)
    data = ctx.work / "auto.jsonl"
    write_documents(data, 600, 1024, seed=1)
    spec = {"name": "auto", "work": str(ctx.work), "model": str(model_dir), "data": str(data), "dtype": "bfloat16", "max_length": 1024,
            "packing": True, "precision": "bf16", "batch_size": "auto", "effective_batch_size": 64, "memory_fraction": 0.1,
            "steps": 2, "window": 1}  # fmt: skip
    ctx.log("a3: batch_size auto on the 1B model")
    result = run_child(ctx, "loraplug", spec)
    choice = result["auto_batch"] or {}
    budget = choice.get("budget_bytes") or 0
    probes = {int(k): v for k, v in (choice.get("probes") or {}).items()}
    size, accumulation = choice.get("batch_size"), choice.get("grad_accum_steps")
    part.figures.update({"choice": choice, "budget_gib": round(budget / 2**30, 2), "training_peak_gib": result["training_peak_gib"],
                         "cuda_total_gib": round((result["cuda_total_bytes"] or 0) / 2**30, 1)})  # fmt: skip
    part.check(
        "micro-batch × accumulation = the effective batch",
        size is not None and size * accumulation == 64,
        f"{size} × {accumulation}",
    )
    part.check(
        "budget is memory_fraction × the GPU's memory",
        abs(budget - 0.1 * (result["cuda_total_bytes"] or 0)) < 2**20,
        f"{budget / 2**30:.2f} GiB",
    )
    chosen_peak = probes.get(size or 0)
    part.check(
        "the chosen micro-batch's measured peak fits",
        chosen_peak is not None and chosen_peak <= budget,
        f"{(chosen_peak or 0) / 2**30:.2f} GiB",
    )
    bigger = [s for s in (1, 2, 4, 8, 16, 32, 64) if s > (size or 64)]
    if bigger:
        nxt = probes.get(bigger[0])
        if bigger[0] in probes:
            part.check("the next divisor does not fit (measured, or out of memory)", nxt is None or nxt > budget,
                       f"{bigger[0]}: {'out of memory' if nxt is None else f'{nxt / 2**30:.2f} GiB'}")  # fmt: skip
        else:
            part.check(
                "the next divisor is not measured (the search predicted it over the budget)",
                True,
                f"{bigger[0]}: not measured",
            )
    part.check("training with the choice stays inside the budget", result["training_peak_gib"] * 2**30 <= budget,
               f"training peak {result['training_peak_gib']:.2f} GiB of {budget / 2**30:.2f} GiB")  # fmt: skip
    part.check("ran 2 steps", result["steps"] == 2, f"{result['steps']}")


# --- b: the tiny Stable Diffusion recipe -------------------------------------------------------------


def part_sd(ctx: Check, part: Part) -> None:
    from loraplug.recipe import load_recipe

    runs = ctx.work / "runs"
    overrides = [
        f'run.output_dir="{runs}"', "run.name=sd", "train.max_steps=60", "train.mixed_precision=bf16", "train.log_every_n_steps=10",
        "eval.every_n_steps=30", "eval.sample_every_n_steps=60", "model.sample_steps=10",
    ]  # fmt: skip
    load_recipe(RECIPES / "tiny_sd_style.toml", host(), overrides)
    part.check("recipe and overrides validate", True, "tiny_sd_style.toml, 60 steps, bf16")
    require_cuda(ctx)
    release_cuda()
    ctx.log("b: tiny SD")
    outcome, optimizers = run_in_process(RECIPES / "tiny_sd_style.toml", overrides)
    check_run(part, "tiny-sd", outcome, 60, optimizers=optimizers)
    summary = outcome.data_summary
    part.check(
        "latents cached", int(summary.get("latents cached", 0)) > 0, f"{summary.get('latents cached')}"
    )
    part.check(
        "text-encoder outputs cached",
        int(summary.get("captions cached", 0)) > 0,
        f"{summary.get('captions cached')}",
    )
    part.check(
        "VAE offloaded to the CPU while training",
        summary.get("vae") == "offloaded to the CPU",
        f"{summary.get('vae')}",
    )
    part.check(
        "text encoder offloaded to the CPU",
        summary.get("text encoder") == "offloaded to the CPU",
        f"{summary.get('text encoder')}",
    )
    grids = sorted((outcome.run_dir / "samples").glob("*.png"))
    part.figures["tiny-sd"].update({"peak_cuda_gib": peak_gib(), "data": summary, "sample_files": len(grids)})


# --- c: ~1B throughput, loraplug against HF Trainer + PEFT ------------------------------------------


def part_throughput(ctx: Check, part: Part) -> None:
    """MFU = model FLOPs per second ÷ the GPU's dense bf16 rate, where model FLOPs per real token are
    2·N forward + 2·N backward through the activations (N: every matmul weight, lm_head included; the
    frozen weights get no weight gradients, so the 6·N of full fine-tuning overstates LoRA's work) +
    6·N_lora for the adapters + causal attention within each document, 6·layers·hidden·n² per document
    of n tokens (forward and backward); padding and cross-document attention are not useful work."""
    dry = not on_cuda()
    if not ctx.dry:
        require_cuda(ctx)
    model_dir = build_llama(ctx)
    max_length = 128 if dry else 1024
    data = ctx.work / "throughput.jsonl"
    write_documents(data, 64 if dry else 1400, max_length)
    lengths = document_lengths(model_dir, data, max_length)
    flops = flop_counts(model_dir, lengths)
    rows, window, steps = (2, 2, 4) if dry else (8, 5, 25)
    # The same real tokens per optimizer step: HF's samples per batch ≈ packed rows × fill / mean length.
    per_sample = max(1, round(rows * max_length * 0.97 / statistics.mean(lengths)))
    precision, dtype = ("no", "float32") if dry else ("bf16", "bfloat16")
    common = {"work": str(ctx.work), "model": str(model_dir), "data": str(data), "dtype": dtype, "max_length": max_length,
              "precision": precision, "steps": steps, "window": window}  # fmt: skip
    setups = {
        "loraplug": ("loraplug", {**common, "name": "loraplug", "packing": True, "batch_size": rows}),
        "loraplug-padded": (
            "loraplug",
            {**common, "name": "loraplug-padded", "packing": False, "batch_size": per_sample},
        ),
        "hf": ("hf", {**common, "name": "hf", "batch_size": per_sample}),
    }
    part.figures.update({
        "model": {**flops, "config": llama_config(ctx)},
        "data": {"documents": len(lengths), "max_length": max_length, "mean_tokens": round(statistics.mean(lengths), 1),
                 "median_tokens": statistics.median(lengths), "max_tokens": max(lengths)},
        "batches": {"loraplug_rows": rows, "padded_samples": per_sample, "steps": steps, "window_steps": window},
    })  # fmt: skip
    peak = None if dry else datasheet_tflops()
    if not dry:
        part.figures["bf16_tflops_measured_8192"] = measured_bf16_tflops()
        part.figures["bf16_tflops_datasheet"] = peak
    results = {}
    for name, (kind, spec) in setups.items():
        ctx.log(f"c: {name}")
        results[name] = result = run_child(ctx, kind, spec)
        rate = result["tokens_per_s"]
        result["model_tflops"] = round(rate * flops["flops_per_token"] / 1e12, 2)
        result["mfu"] = round(rate * flops["flops_per_token"] / (peak * 1e12), 4) if peak else None
        result["mfu_6n"] = round(rate * flops["flops_per_token_6n"] / (peak * 1e12), 4) if peak else None
        part.check(f"{name}: trained {steps} steps", result["steps"] == steps, f"{result['steps']}")
        part.check(f"{name}: throughput measured", rate > 0 and math.isfinite(rate), f"{rate:,.0f} tokens/s")
        if not dry:
            part.check(
                f"{name}: fused AdamW",
                result["fused_adamw"],
                result.get("optimizer", f"fused={result['fused_adamw']}"),
            )
    part.figures["results"] = results
    if "hf" in results and "loraplug" in results:
        part.figures["loraplug_vs_hf"] = round(
            results["loraplug"]["tokens_per_s"] / results["hf"]["tokens_per_s"], 3
        )
        part.figures["loraplug_padded_vs_hf"] = round(
            results["loraplug-padded"]["tokens_per_s"] / results["hf"]["tokens_per_s"], 3
        )
    if dry:
        raise Skip(
            "CPU dry run: the three setups ran on a tiny model on the CPU for 4 steps; the 1.1B CUDA measurement was not run"
        )


# --- d: packed loss equals unpacked loss -------------------------------------------------------------


def packing_losses(model: Any, lengths: list[int], *, leak: bool, seed: int = 0) -> dict[str, float]:
    """Mean loss and logits of documents packed into one row against the same documents alone."""
    import torch

    from loraplug_causal_lm.compute import forward, loss_sum
    from loraplug_causal_lm.encode import IGNORE, Encoded
    from loraplug_causal_lm.pack import PackedCollator, PackedRow

    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    docs = []
    for i, n in enumerate(lengths):
        ids = torch.randint(10, vocab, (n,), generator=generator).tolist()
        docs.append(
            Encoded(id=f"doc{i}", input_ids=ids, labels=[*ids[1:], IGNORE], truncated=False, full_length=n)
        )
    device = next(model.parameters()).device
    packed_batch = PackedCollator(0)([PackedRow(docs)])
    if leak:  # the negative control: one segment, positions running on — documents see each other
        packed_batch.inputs["segment_ids"] = torch.zeros_like(packed_batch.inputs["segment_ids"])
        packed_batch.inputs["position_ids"] = torch.arange(packed_batch.inputs["input_ids"].shape[1])[None]
    packed_batch.inputs = {k: v.to(device) for k, v in packed_batch.inputs.items()}
    with torch.no_grad():
        packed = loss_sum(model, packed_batch)
        packed_logits = forward(model, packed_batch)[0][0].float()
        alone_sum, alone_logits = 0.0, []
        for doc in docs:
            batch = PackedCollator(0)([PackedRow([doc])])
            ids = batch.inputs["input_ids"].to(device)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            alone_logits.append(logits)
            labels = batch.inputs["labels"][0].to(device)
            keep = labels != IGNORE
            alone_sum += float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
    alone = torch.cat(alone_logits)
    packed_loss = float(packed.loss_sum) / packed.num_targets
    alone_loss = alone_sum / packed.num_targets
    return {
        "packed_loss": packed_loss,
        "alone_loss": alone_loss,
        "loss_relative_diff": abs(packed_loss - alone_loss) / alone_loss,
        "logits_max_abs_diff": float((packed_logits[: alone.shape[0]] - alone).abs().max()),
        "logits_scale": float(alone.abs().max()),
    }


def part_packing(ctx: Check, part: Part) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from loraplug_causal_lm.pack import packs_exactly

    model_dir = build_llama(ctx)
    lengths = [900, 500, 400, 200, 48] if on_cuda() else [60, 30, 25, 13]
    device = "cuda" if on_cuda() else "cpu"
    precisions = ["float32", "bfloat16"] if on_cuda() or not ctx.dry else ["float32"]
    for dtype_name in precisions:
        dtype = getattr(torch, dtype_name)
        model = (
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
            .to(device)
            .eval()
        )
        figures = packing_losses(model, lengths, leak=ctx.leak_packing)
        control = packing_losses(model, lengths, leak=True)
        startup = packs_exactly(model)
        del model
        release_cuda()
        scale = max(1.0, figures["logits_scale"])
        if dtype_name == "float32":
            limit = 1e-4 * scale  # the start-up check's float32 tolerance
            part.check("float32: packed logits equal the documents' own", figures["logits_max_abs_diff"] <= limit,
                       f"max |Δlogit| {figures['logits_max_abs_diff']:.2e} (limit {limit:.1e})")  # fmt: skip
            part.check(
                "float32: packed loss equals unpacked",
                figures["loss_relative_diff"] <= 1e-5,
                f"relative {figures['loss_relative_diff']:.2e}",
            )
            part.check("float32: the comparison sees cross-document attention (negative control)", control["logits_max_abs_diff"] > 10 * limit,
                       f"max |Δlogit| with leakage {control['logits_max_abs_diff']:.2e}")  # fmt: skip
        else:
            # bf16 keeps 8 significant bits: two kernel paths (masked vs plain causal, other shapes) may differ
            # by rounding alone, so the losses must agree to bf16's unit roundoff 2⁻⁸ (relative).
            part.check("bfloat16: packed loss equals unpacked within 2⁻⁸ relative", figures["loss_relative_diff"] <= BF16_UNIT_ROUNDOFF,
                       f"relative {figures['loss_relative_diff']:.2e}; {figures['packed_loss']:.5f} vs {figures['alone_loss']:.5f}")  # fmt: skip
            part.check("bfloat16: packed logits within the start-up check's bf16 tolerance", figures["logits_max_abs_diff"] <= 5e-2 * scale,
                       f"max |Δlogit| {figures['logits_max_abs_diff']:.2e} (limit {5e-2 * scale:.2e})")  # fmt: skip
            # On random weights leakage moves the mean loss by less than 2⁻⁸ (measured ~2e-4 on the 1.1B model),
            # so it is the logits that must show it: the bf16 comparison is only a check if they do.
            part.check("bfloat16: the logits comparison sees cross-document attention (negative control)",
                       control["logits_max_abs_diff"] > 5e-2 * scale, f"max |Δlogit| with leakage {control['logits_max_abs_diff']:.2e}")  # fmt: skip
        part.check(
            f"{dtype_name}: loraplug's start-up check (packs_exactly) passes",
            startup is None,
            startup or "ok",
        )
        part.figures[dtype_name] = {
            **figures,
            "leak_control": control,
            "device": device,
            "document_lengths": lengths,
        }
    from importlib.util import find_spec

    part.figures["flash_attention_2"] = (
        "installed"
        if find_spec("flash_attn")
        else "not installed: flash-attn is a CUDA extension built per torch/CUDA version, "
        "the GPU machine has no network and no wheel for its torch was carried; the SDPA 4-D mask path above is what ran"
    )
    if not on_cuda():
        raise Skip(
            "CPU dry run: compared in float32 on the CPU; the CUDA float32 and bf16 comparisons were not run"
        )


# --- e: QLoRA nf4 ---------------------------------------------------------------------------------------


def part_qlora(ctx: Check, part: Part) -> None:
    from importlib.util import find_spec

    if find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes is not installed here")
    from loraplug.recipe import load_recipe

    runs = ctx.work / "runs"
    overrides = [*quickstart_overrides(runs, "nf4", "train.mixed_precision=bf16", "model.quantization=nf4"), "train.max_steps=60",
                 "~train.save_every_n_steps", "eval.every_n_steps=30"]  # fmt: skip
    load_recipe(RECIPES / "quickstart.toml", host(), overrides)
    part.check("recipe and overrides validate", True, "quickstart.toml with model.quantization = nf4")
    require_cuda(ctx)
    import bitsandbytes
    from rich.console import Console

    from loraplug.pipeline import load_run

    release_cuda()
    ctx.log("e: QLoRA nf4")
    outcome, optimizers = run_in_process(RECIPES / "quickstart.toml", overrides)
    check_run(part, "nf4", outcome, 60, optimizers=optimizers)
    part.figures["nf4"]["peak_cuda_gib"] = peak_gib()
    part.figures["bitsandbytes"] = bitsandbytes.__version__
    _, _, model = load_run(outcome.run_dir, host(), Console(stderr=True), with_adapter=False)
    kinds = {type(m).__name__ for m in model.module.modules()}
    part.check(
        "the base's linear layers are 4-bit (bitsandbytes Linear4bit)",
        "Linear4bit" in kinds,
        ", ".join(sorted(k for k in kinds if "Linear" in k)),
    )


# --- f: the fused linear cross-entropy (Liger on CUDA) against the full logits ------------------------


def fused_loss_figures(
    device: str, autocast: Any, vocab: int, length: int, *, small: bool = False
) -> dict[str, Any]:
    """``loss_sum`` on the full logits against ``"auto"`` (a fused kernel) on a LoRA'd LLaMA with a wide head.

    The same model, batch and autocast state; returned: the kernel ``"auto"`` named in its log line, the
    losses, the largest gradient difference relative to that gradient's scale, and each path's peak.
    """
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraplug import Batch
    from loraplug_causal_lm import chunked_loss
    from loraplug_causal_lm.compute import loss_sum
    from loraplug_causal_lm.encode import IGNORE
    from loraplug_causal_lm.model import lora_config
    from loraplug_causal_lm.options import LoraOptions

    config = LlamaConfig(**{**LLAMA_TINY, "hidden_size": 256, "intermediate_size": 512, "vocab_size": vocab,
                            "max_position_embeddings": length})  # fmt: skip
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), lora_config(LoraOptions())).to(device)
    for name, parameter in model.named_parameters():  # LoRA's B starts at zero: make every weight learn
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(10, vocab, (2, length), generator=generator)
    labels = torch.randint(10, vocab, (2, length), generator=generator)
    labels[:, :16] = IGNORE
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch = Batch(
        inputs={k: v.to(device) for k, v in inputs.items()},
        num_targets=int((labels != IGNORE).sum()),
        num_tokens=ids.numel(),
    )
    said: list[str] = []
    results = {}
    thresholds = chunked_loss.AUTO_ABOVE, chunked_loss.CHUNK_NUMBERS
    if small:  # a batch small enough for the CPU: "auto" is told to chunk it anyway, 64 tokens at a time
        chunked_loss.AUTO_ABOVE, chunked_loss.CHUNK_NUMBERS = 0, 64 * vocab
    for setting in (0, "auto"):
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with autocast():
            loss = loss_sum(model, batch, setting, info=said.append).loss_sum
        loss.backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        results[setting] = (float(loss.detach()), grads, peak)
    chunked_loss.AUTO_ABOVE, chunked_loss.CHUNK_NUMBERS = thresholds
    (plain, plain_grads, plain_peak), (fused, fused_grads, fused_peak) = results[0], results["auto"]
    worst = max(
        float((fused_grads[n] - g).abs().max()) / max(float(g.abs().max()), 1e-12)
        for n, g in plain_grads.items()
    )
    return {
        "kernel": said[0] if said else "none named",
        "loss_plain": plain,
        "loss_fused": fused,
        "loss_relative_diff": abs(fused - plain) / abs(plain),
        "gradient_max_relative_diff": worst,
        "same_gradients": sorted(plain_grads) == sorted(fused_grads),
        "peak_gib_plain": plain_peak,
        "peak_gib_fused": fused_peak,
        "rows": 2,
        "length": length,
        "vocab": vocab,
    }


def part_fused_loss(ctx: Check, part: Part) -> None:
    from contextlib import nullcontext
    from importlib.util import find_spec

    import torch

    if not on_cuda():
        # What runs here: "auto" picks torch's linear_cross_entropy (never Liger) and matches the full logits.
        figures = fused_loss_figures("cpu", nullcontext, 4096, 256, small=True)
        part.figures["cpu_float32"] = figures
        part.check(
            "CPU: auto names torch's kernel, not Liger's",
            "linear_cross_entropy" in figures["kernel"],
            figures["kernel"],
        )
        part.check("CPU float32: loss and gradients equal the full logits' (rtol 1e-5)",
                   figures["loss_relative_diff"] <= 1e-5 and figures["gradient_max_relative_diff"] <= 1e-5 and figures["same_gradients"],
                   f"loss {figures['loss_relative_diff']:.1e}, gradients {figures['gradient_max_relative_diff']:.1e}")  # fmt: skip
    if ctx.dry:
        raise Skip(
            "CPU dry run: torch's fused kernel compared with the full logits on the CPU; Liger needs CUDA and was not run"
        )
    if find_spec("liger_kernel") is None:
        raise Skip(
            "liger-kernel is not installed here (pip install 'loraplug-causal-lm[liger]'); Liger's loss was not compared"
        )
    require_cuda(ctx)
    if not on_cuda():
        raise Skip(cuda_reason() or "no CUDA device")
    ctx.log("f: Liger's fused linear cross-entropy against the full logits")
    part.figures["liger_kernel"] = metadata.version("liger-kernel")
    bf16 = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731 — as accelerate's bf16 wraps the forward
    for name, autocast, loss_limit, grad_limit in (
        ("float32", nullcontext, 1e-5, 1e-4),
        ("bf16", bf16, BF16_UNIT_ROUNDOFF, 0.05),
    ):
        figures = fused_loss_figures("cuda", autocast, 128_256, 4096)
        part.figures[name] = figures
        part.check(f"{name}: auto names Liger's kernel", "Liger" in figures["kernel"], figures["kernel"])
        part.check(f"{name}: loss equals the full logits' (relative {loss_limit:.0e})", figures["loss_relative_diff"] <= loss_limit,
                   f"{figures['loss_fused']:.6f} vs {figures['loss_plain']:.6f}, relative {figures['loss_relative_diff']:.1e}")  # fmt: skip
        part.check(f"{name}: gradients equal the full logits' (relative to each one's scale, {grad_limit:.0e})",
                   figures["same_gradients"] and figures["gradient_max_relative_diff"] <= grad_limit,
                   f"largest difference {figures['gradient_max_relative_diff']:.1e}")  # fmt: skip
        part.check(f"{name}: the fused kernel's peak is below the full logits'", figures["peak_gib_fused"] < figures["peak_gib_plain"],
                   f"{figures['peak_gib_fused']:.2f} vs {figures['peak_gib_plain']:.2f} GiB")  # fmt: skip
        release_cuda()


def part_packed_attention(ctx: Check, part: Part) -> None:
    """Dense-mask SDPA against FlexAttention's block mask on the same packed rows (bench/packed_attention.py)."""
    import packed_attention
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from loraplug_causal_lm.pack import flex_training_blocker

    if not on_cuda():
        model = LlamaForCausalLM._from_config(
            LlamaConfig(**packed_attention.MODEL), attn_implementation="flex_attention"
        )
        blocker = flex_training_blocker(model)
        part.check(
            "CPU: loraplug refuses to train with FlexAttention (no backward on the CPU)",
            blocker is not None,
            blocker or "",
        )
        raise Skip(
            "CPU dry run: FlexAttention has no backward on the CPU; the training-step comparison needs CUDA "
            "(bench/packed_attention.py measured the CPU forward, docs/performance.md)"
        )
    ctx.log("g: packed attention, dense-mask SDPA against FlexAttention's block mask")
    try:
        results = packed_attention.measure([2048, 8192], 2, torch.device("cuda"))
    except packed_attention.LossMismatch as exc:
        part.check("flex and sdpa losses agree on the same packed rows (relative 1e-4)", False, str(exc))
        return
    part.check(
        "flex and sdpa losses agree on the same packed rows (relative 1e-4)", True, "lengths 2048 and 8192"
    )
    part.figures["results"] = results
    part.figures["table"] = packed_attention.table(results)
    release_cuda()


# --- h: DeepSpeed ZeRO-2 and ZeRO-3 on CUDA -------------------------------------------------------------


def part_deepspeed(ctx: Check, part: Part) -> None:
    """The quickstart in bf16 under DeepSpeed's engine on CUDA (one process: the engine, its fp32 master
    weights, unmanaged accumulation, the gathered checkpoints), against part a1's bf16 run without it.
    Two processes on gloo are tests/test_deepspeed.py; NCCL across GPUs needs a machine with several."""
    from loraplug.recipe import load_recipe
    from loraplug.testing import deepspeed_config

    runs = ctx.work / "runs"
    plans = {
        stage: quickstart_overrides(runs, f"zero{stage}", "train.mixed_precision=bf16") for stage in (2, 3)
    }
    for overrides in plans.values():
        load_recipe(RECIPES / "quickstart.toml", host(), overrides)
    part.check("recipes and overrides validate", True, "quickstart.toml, bf16, ZeRO-2 and ZeRO-3")
    require_cuda(ctx)
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise Skip("deepspeed is not installed on this machine (pip install 'loraplug[deepspeed]')") from None
    reference = runs / "bf16"
    if not (reference / "adapter" / "adapter.safetensors").exists():
        raise Skip("needs part a1's bf16 run as the reference, which did not finish")
    reference_val = val_losses(reference)[-1][1]
    for stage, overrides in plans.items():
        config = ctx.work / f"zero{stage}.yaml"
        config.write_text(deepspeed_config(stage, processes=1, precision="bf16"), encoding="utf-8")
        ctx.log(f"h: quickstart under DeepSpeed ZeRO-{stage}")
        proc = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", "loraplug",
             "run", str(RECIPES / "quickstart.toml"), *overrides, "--overwrite"],
            cwd=ctx.work, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        label = f"ZeRO-{stage}"
        if not part.check(
            f"{label}: the run finishes", proc.returncode == 0, (proc.stdout + proc.stderr)[-800:]
        ):
            continue
        part.check(
            f"{label}: DeepSpeed's engine trained",
            f"DeepSpeed ZeRO-{stage}:" in proc.stdout,
            proc.stdout[-400:],
        )
        run_dir = runs / f"zero{stage}"
        status = run_json(run_dir)
        part.check(f"{label}: exports pass parity", all(e["ok"] for e in status.get("exports", [])),
                   json.dumps(status.get("exports")))  # fmt: skip
        vals = val_losses(run_dir)
        final = vals[-1][1]
        part.check(f"{label}: validation loss falls", final < vals[0][1], f"{vals[0][1]:.4f} → {final:.4f}")
        # DeepSpeed runs the model in bf16 with fp32 master weights; accelerate autocasts fp32 weights:
        # the same training, not the same rounding.
        part.check(f"{label}: final validation loss within 2 % of the bf16 run without DeepSpeed",
                   abs(final - reference_val) / reference_val < 0.02, f"{final:.4f} vs {reference_val:.4f}")  # fmt: skip
        part.figures[label] = {"val_loss_first_last": [round(vals[0][1], 4), round(final, 4)],
                               "reference_val_loss": round(reference_val, 4)}  # fmt: skip


# --- driver ----------------------------------------------------------------------------------------------


#: (key, what it checks, the part, seconds it needs on an H200: a part is not started with less budget left)
PARTS: list[tuple[str, str, Callable[[Check, Part], None], float]] = [
    (
        "a1",
        "quickstart (tiny LLaMA) in bf16 and fp16: loss falls, exports' parity, fused AdamW, loss scaler",
        part_quickstart,
        40,
    ),
    ("a2", "resume on CUDA through the CLI after SIGKILL", part_resume, 40),
    ("b", "tiny Stable Diffusion: caching, VAE offload, exports' parity", part_sd, 40),
    ("a3", 'batch_size = "auto" against CUDA memory (1.1B model)', part_auto_batch, 40),
    ("c", "1.1B LLaMA-shaped LoRA throughput: loraplug vs HF Trainer + PEFT", part_throughput, 90),
    ("d", "packing: packed loss equals unpacked (SDPA 4-D mask)", part_packing, 20),
    ("e", "QLoRA nf4 (bitsandbytes)", part_qlora, 25),
    ("f", "fused linear cross-entropy (Liger on CUDA) against the full logits", part_fused_loss, 20),
    (
        "g",
        "packed attention: dense-mask SDPA against FlexAttention, training steps at 2048 and 8192",
        part_packed_attention,
        30,
    ),
    ("h", "DeepSpeed ZeRO-2 and ZeRO-3 (bf16, one GPU) against the bf16 run without it", part_deepspeed, 40),
]
#: What the issue asks for that this check does not do, and why.
NOT_COVERED = {
    "flash-attention 2 (varlen) packing": "flash-attn is not installed on the GPU machine (no network there; it is a compiled "
    "extension per torch/CUDA build and none was carried); part d checks the SDPA 4-D mask path",
    "SDXL-shaped step": "not in this check yet: the SDXL model kind (stable-diffusion-xl) landed after the check was written; "
    "bench/sd_caching.py measures an SDXL-shaped step (random weights from the real config) on any device",
    "SD 1.5-shaped step": "not in this check: it needs a full random SD 1.5 pipeline (~1 GB UNet) built in the run; part b runs the "
    "same code path (caching, offload, LoRA/LoCon, exports) on tiny-sd",
}


def machine(dry: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "mode": "cpu-dry-run" if dry else "cuda",
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)  # fmt: skip
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                            text=True, timeout=10, check=False).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            pass
    versions = {}
    for name in (
        "loraplug",
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "diffusers",
        "bitsandbytes",
        "tokenizers",
        "safetensors",
        "pydantic",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info["versions"] = versions
    info["commit"] = os.environ.get("GPU_CHECK_COMMIT") or _git_commit()
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    where = (
        f"{m.get('gpu')} ({m.get('gpu_memory_gib')} GiB, CUDA {m.get('cuda')}, driver {m.get('driver')})"
        if m.get("gpu")
        else "CPU only"
    )
    lines = [
        "# loraplug GPU check",
        "",
        f"- mode: **{m['mode']}**; result: **{'FAILED' if report['failed'] else 'passed'}** in {report['seconds']:.0f} s",
        f"- machine: {where}; {m['cpus']} CPUs; Python {m['python']}",
        f"- versions: {versions}; commit {m.get('commit')}",
        "",
        "| part | what | status | seconds | note |",
        "|---|---|---|---|---|",
    ]
    for p in report["parts"]:
        note = "; ".join(p["failures"]) if p["status"] == "failed" else (p["reason"] or "")
        lines.append(
            f"| {p['key']} | {p['title']} | {p['status']} | {p['seconds']:.0f} | {note.replace('|', '/')} |"
        )
    lines += ["", "## Checks", ""]
    for p in report["parts"]:
        for c in p["checks"]:
            lines.append(f"- {p['key']} {'✔' if c['ok'] else '✘ FAILED'} {c['name']}: {c['detail']}")
    throughput = next((p for p in report["parts"] if p["key"] == "c" and p["figures"].get("results")), None)
    if throughput:
        f = throughput["figures"]
        lines += [
            "", "## Throughput (part c)", "",
            f"Model: {f['model']['parameters'] / 1e9:.2f} B parameters ({f['model']['lora_parameters'] / 1e6:.1f} M LoRA); "
            f"{f['model']['flops_per_token'] / 1e9:.2f} GFLOP per real token (4·N_matmul + 6·N_lora + attention); "
            f"data: {f['data']['documents']} documents, mean {f['data']['mean_tokens']} tokens, max_length {f['data']['max_length']}; "
            f"GPU bf16 rate: measured {f.get('bf16_tflops_measured_8192')} TFLOP/s (8192³), datasheet {f.get('bf16_tflops_datasheet')}.",
            "",
            "| setup | batch | real tokens/s | model TFLOP/s | MFU | MFU (6·N convention) | peak GiB | fused AdamW |",
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        batches = f["batches"]
        for name, r in f["results"].items():
            batch = (
                f"{batches['loraplug_rows']} packed rows"
                if name == "loraplug"
                else f"{batches['padded_samples']} samples, padded"
            )
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "—"
            mfu6 = f"{r['mfu_6n']:.1%}" if r.get("mfu_6n") is not None else "—"
            lines.append(
                f"| {name} | {batch} | {r['tokens_per_s']:,.0f} | {r['model_tflops']} | {mfu} | {mfu6} | {r['peak_gib']} | {r['fused_adamw']} |"
            )
    lines += ["", "## Not covered", ""] + [f"- {k}: {v}" for k, v in report["not_covered"].items()]
    lines += ["", "Figures of every part are in gpu_check.json."]
    return "\n".join(lines) + "\n"


def write_report(
    out: Path, started: float, dry: bool, parts: list[Part], info: dict[str, Any]
) -> dict[str, Any]:
    report = {
        "machine": info,
        "seconds": round(time.monotonic() - started, 1),
        "failed": [f"{p.key}: {f}" for p in parts for f in p.failures],
        "parts": [{**asdict(p), "failures": p.failures} for p in parts],
        "not_covered": NOT_COVERED,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("gpu_check.json", json.dumps(report, indent=2, default=str) + "\n"),
        ("gpu_check.md", markdown(report)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="Where gpu_check.json and gpu_check.md are written.")
    parser.add_argument(
        "--cpu-dry-run",
        action="store_true",
        help="No CUDA: validate every recipe and run the CPU-sized parts.",
    )
    parser.add_argument("--only", nargs="+", choices=[k for k, *_ in PARTS], help="Run only these parts.")
    parser.add_argument(
        "--budget",
        type=float,
        default=450.0,
        help="Seconds for the whole check; parts not started in time are skipped.",
    )
    parser.add_argument(
        "--work", type=Path, help="Working directory (default: a temporary one, removed afterwards)."
    )
    parser.add_argument(
        "--leak-packing", action="store_true", help=argparse.SUPPRESS
    )  # tests: part d must fail
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](json.loads(args.spec.read_text()))
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.cpu_dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = (
            ""  # before torch initialises CUDA: the dry run is the CPU run everywhere
        )
    started = time.monotonic()
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available() and not os.environ.get("GPU_CHECK_ON_CPU"):
        print(
            "error: no CUDA device (torch.cuda.is_available() is False); run with --cpu-dry-run to check the script on the CPU",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="loraplug-gpu-check-") as tmp:
        work = (args.work or Path(tmp)).absolute()
        work.mkdir(parents=True, exist_ok=True)
        os.environ["LORAPLUG_CACHE"] = str(
            work / "cache"
        )  # a fresh preset cache: the build is part of the check
        ctx = Check(
            out=args.out,
            work=work,
            dry=args.cpu_dry_run,
            deadline=started + args.budget,
            leak_packing=args.leak_packing,
        )
        info = machine(args.cpu_dry_run)
        parts: list[Part] = []
        for key, title, run, needs in PARTS:
            if args.only and key not in args.only:
                continue
            part = Part(key, title)
            parts.append(part)
            begun = time.monotonic()
            if ctx.remaining < (5 if args.cpu_dry_run else needs):
                part.skip(
                    f"time budget: {ctx.remaining:.0f} s of --budget {args.budget:.0f} s left, this part needs about {needs:.0f} s"
                )
            else:
                ctx.log(f"part {key}: {title}")
                try:
                    run(ctx, part)
                except Skip as exc:
                    part.skip(str(exc))
                except Exception as exc:  # noqa: BLE001 — a broken part is reported, and the others still run
                    part.status = "failed"
                    part.error = f"{type(exc).__name__}: {exc}".strip()[:2000]
                    traceback.print_exc()
            part.seconds = round(time.monotonic() - begun, 1)
            ctx.log(f"part {key}: {part.status} in {part.seconds:.0f} s {part.failures or ''}")
            write_report(args.out, started, args.cpu_dry_run, parts, info)
            release_cuda()
        report = write_report(args.out, started, args.cpu_dry_run, parts, info)
    if report["failed"]:
        print("GPU check FAILED:\n  " + "\n  ".join(report["failed"]), file=sys.stderr)
        return 1
    print(
        f"GPU check passed ({'CPU dry run' if args.cpu_dry_run else 'CUDA'}): {args.out / 'gpu_check.md'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
