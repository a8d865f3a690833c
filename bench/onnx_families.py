"""Which transformers causal-LM families the `onnx` export handles: export a tiny, randomly initialised
model of each through loraplug-onnx's own code path and check it against onnxruntime on a shape the
export never saw (with a padded row). The families that pass are loraplug_causal_lm.deploy.VERIFIED_FAMILIES
(the causal-LM plugin vouches for them in its deployable view); the table this prints is in docs/formats.md.

    python bench/onnx_families.py [family ...]
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from loraplug import Deployable
from loraplug_causal_lm.deploy import VERIFIED_FAMILIES, graph_inputs, probe
from loraplug_onnx import convert
from loraplug_onnx.export import graph
from loraplug_onnx.options import DEFAULT_OPSET

VOCAB = 256
#: Each family's own names for a 2-layer, 64-wide model with 4 heads.
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256},
    "opt": {
        "hidden_size": 64,
        "ffn_dim": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "word_embed_proj_dim": 64,
    },
    "gpt_neox": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
}
DECODER = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def check(family: str) -> tuple[float, float]:
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = CONFIGS.get(family, DECODER)
    config = AutoConfig.for_model(
        family, vocab_size=VOCAB, pad_token_id=0, max_position_embeddings=256, **settings
    )
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    inputs, check_inputs, dynamic_shapes = graph_inputs(VOCAB, generator)
    model = AutoModelForCausalLM.from_config(config).eval()
    deployable = Deployable(
        module=model, inputs=inputs, check_inputs=check_inputs, probe=probe, output="logits",
        what=f"a tiny {family} model", dynamic_shapes=dynamic_shapes,
    )  # fmt: skip
    traced = graph(deployable)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = convert.export(traced, Path(tmp), DEFAULT_OPSET)
        seconds = time.perf_counter() - start
        return seconds, convert.max_abs_diff(path, traced.module, check_inputs)


def main(families: list[str]) -> None:
    import onnxruntime
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"opset {DEFAULT_OPSET}, {platform.machine()} CPU\n"
    )
    print("| family | export (s) | max abs logit diff, onnxruntime vs PyTorch |")
    print("|---|---:|---:|")
    for family in families:
        try:
            seconds, diff = check(family)
            print(f"| {family} | {seconds:.1f} | {diff:.1e} |", flush=True)
        except Exception as exc:  # noqa: BLE001 — a failing family is a row of the table
            print(
                f"| {family} | failed | {type(exc).__name__}: {str(exc).splitlines()[0][:80]} |", flush=True
            )


if __name__ == "__main__":
    main(sys.argv[1:] or list(VERIFIED_FAMILIES))
