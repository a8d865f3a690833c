"""The merged causal LM as ONNX: ``input_ids``, ``attention_mask`` → ``logits``, any batch and length."""

from __future__ import annotations

from pathlib import Path

import torch

from loraplug import ExportResult, LoraplugError, ModelBundle, RunContext
from loraplug_onnx import convert
from loraplug_onnx.options import OnnxExportOptions

#: transformers model types whose export bench/onnx_families.py verifies (tiny configs, parity below
#: 1e-6; docs/formats.md has the table). Others are refused unless `any_family = true`.
VERIFIED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox", "opt")
EXPORT_SHAPE = (2, 8)
#: Another batch size and length than the export's, and one right-padded row, so the check proves the
#: axes are dynamic and the attention mask is honoured.
PARITY_SHAPE = (3, 13)
PADDED = 4


class LogitsOnly(torch.nn.Module):
    """The LM without its KV cache: one graph for every length, outputs only the logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def _inputs(vocab: int, shape: tuple[int, int], generator: torch.Generator, padded: int = 0) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(0, vocab, shape, generator=generator)
    attention_mask = torch.ones(shape, dtype=torch.long)
    if padded:
        attention_mask[0, -padded:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits_graph(model: torch.nn.Module, vocab: int, generator: torch.Generator, what: str) -> convert.Graph:
    """``model`` as a logits-only graph with dynamic batch and sequence axes, traced at EXPORT_SHAPE."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    return convert.Graph(
        module=LogitsOnly(model).eval(),
        inputs=_inputs(vocab, EXPORT_SHAPE, generator),
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        output="logits",
        what=what,
    )


def parity_inputs(vocab: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return _inputs(vocab, PARITY_SHAPE, generator, padded=PADDED)


def export(options: OnnxExportOptions, model: ModelBundle, out_dir: Path, ctx: RunContext) -> ExportResult:
    from loraplug_causal_lm.merge import merged_model

    base = model.module.get_base_model() if hasattr(model.module, "get_base_model") else model.module
    family = getattr(base.config, "model_type", "?")
    if family not in VERIFIED_FAMILIES and not options.any_family:
        raise LoraplugError(
            f"The onnx export does not support the model family {family!r} ({type(base).__name__}); the families it "
            f"verifies are {', '.join(VERIFIED_FAMILIES)}",
            fix="Set `any_family = true` on the export to try anyway (onnxruntime parity is still checked), or use the "
            "`merged` export and convert it with your own tooling; the adapter and the other exports are kept",
        )
    merged = merged_model(model, ctx)
    vocab = int(merged.module.config.vocab_size)
    generator = torch.Generator().manual_seed(ctx.seed)
    graph = logits_graph(merged.module, vocab, generator, f"the merged {family} model")
    path = convert.export(graph, out_dir, options.opset)
    feeds = parity_inputs(vocab, generator)
    diff = convert.max_abs_diff(path, graph.module, feeds)
    convert.check_parity(diff, options.tolerance, feeds, graph.what)
    merged.module.config.save_pretrained(str(out_dir))
    merged.tokenizer.save_pretrained(str(out_dir))
    return ExportResult(
        figures=convert.figures(path, graph, feeds, "max_abs_logit_diff", diff, options.tolerance),
        notes=merged.notes,
        loads_with='onnxruntime.InferenceSession("model.onnx").run(["logits"], {"input_ids": ids, "attention_mask": mask})',
    )
