"""The figures docs/formats.md quotes for each deployment export, measured on the quickstart recipe.

Trains recipes/quickstart.toml (tiny-llama, CPU) twice — on the float32 base, and QLoRA on an nf4
base — with every deployment export, and prints each export's manifest figures as Markdown.

    python bench/export_figures.py [OUTPUT_DIR]
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from loraplug.testing import run_cli

ROOT = Path(__file__).parents[1]
EXPORTS = [{"kind": "merged"}, {"kind": "onnx"}, {"kind": "bnb-8bit"}, {"kind": "bnb-4bit"}, {"kind": "int8"}]
VARIANTS: dict[str, dict[str, Any]] = {"float32 base": {}, "QLoRA, nf4 base": {"quantization": "nf4"}}


def recipe_for(out: Path, name: str, model: dict[str, Any]) -> Path:
    recipe = tomllib.loads((ROOT / "recipes" / "quickstart.toml").read_text())
    recipe["run"].update(name=name, output_dir=str(out))
    recipe["data"]["path"] = str(ROOT / "recipes" / recipe["data"]["path"])
    recipe["model"].update(model)
    recipe["export"] = EXPORTS
    path = out / f"{name}.toml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(recipe))
    return path


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value)


KEYS = [
    "max_abs_logit_diff_vs_trained", "max_abs_logit_diff", "size_ratio", "max_abs_logit_drift",
    "mean_abs_logit_drift", "perplexity_unquantized", "perplexity_quantized", "perplexity_change_pct",
]  # fmt: skip


def main(out: Path) -> None:
    import torch
    import transformers

    print(
        f"quickstart recipe, torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()} CPU\n"
    )
    for title, model in VARIANTS.items():
        name = "qlora" if model else "fp32"
        result = run_cli("run", recipe_for(out, name, model), "--overwrite")
        if result.exit_code != 0:
            print(result.output[-3000:])
            raise SystemExit(result.exit_code)
        print(f"### {title}\n\n| export | " + " | ".join(KEYS) + " |\n|---|" + "---:|" * len(KEYS))
        for export in EXPORTS:
            figures = json.loads((out / name / "exports" / export["kind"] / "export.json").read_text())[
                "figures"
            ]
            print(
                f"| {export['kind']} | "
                + " | ".join(show(figures[k]) if k in figures else "" for k in KEYS)
                + " |"
            )
        print()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="loraplug-bench-")))
