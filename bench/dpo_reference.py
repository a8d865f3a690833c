"""DPO's reference: the adapter switched off at every step, or log-probabilities computed once before training.

`recipes/tiny_dpo.toml` (tiny LLaMA, 360 training pairs) run twice through `loraplug run`, each in a fresh
process, with validation, samples and exports off:

  adapter-off   objective.precompute_reference = false: one more forward per step, without gradients
  cached        objective.precompute_reference = true: one forward per pair before training, none per step

Reported: the training loop's seconds and tokens per second (from the run's own summary line), the
seconds spent computing the reference before training, and the whole process's wall time — the
cache pays for itself when the run covers each pair more than about once.

    python bench/dpo_reference.py                  # 45 steps of 8 pairs: one epoch, prints the table for docs/performance.md
    python bench/dpo_reference.py --steps 10       # a quick check of the script
    python bench/dpo_reference.py --recipe recipes/llama_dpo.toml --steps 50   # on a GPU

This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).parents[1]
SETUPS = {"adapter-off": "false", "cached": "true"}
DONE = re.compile(r"done (\d+) steps in ([\d.]+) s \(([\d,.]+) tokens/s\)")
PRECOMPUTED = re.compile(r"reference log-probabilities of (\d+) pairs computed in ([\d.]+)s")


def run(recipe: Path, setup: str, steps: int, out: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "loraplug", "run", str(recipe),
        f"run.output_dir={out}", f"run.name={setup}",
        f"objective.precompute_reference={SETUPS[setup]}",
        f"train.max_steps={steps}", "train.log_every_n_steps=1000",
        f"eval.every_n_steps={steps * 10}", "eval.metrics=[]", "eval.sample_prompts=[]", "data.val_fraction=0.0",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=out, check=False)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{setup} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    done = DONE.search(proc.stdout)
    assert done, proc.stdout[-2000:]
    precomputed = PRECOMPUTED.search(proc.stdout)
    return {
        "setup": setup,
        "steps": int(done.group(1)),
        "train_s": float(done.group(2)),
        "tokens_per_s": float(done.group(3).replace(",", "")),
        "reference_s": float(precomputed.group(2)) if precomputed else 0.0,
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "tiny_dpo.toml")
    parser.add_argument("--steps", type=int, default=45)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(args.recipe.absolute(), setup, args.steps, Path(tmp)) for setup in SETUPS]
    print("| reference | steps | training loop | tokens/s | reference before training | whole run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setup']} | {r['steps']} | {r['train_s']:.1f} s | {r['tokens_per_s']:.0f} | "
            f"{r['reference_s']:.1f} s | {r['wall_s']:.1f} s |"
        )
    if args.out:
        args.out.write_text(json.dumps({"recipe": str(args.recipe), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
