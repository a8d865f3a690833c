"""LoRA on the Flux transformer by the layer groups users know, with a rank per group, through peft.

Double blocks are diffusers' ``transformer_blocks`` (kohya ``double_blocks``), single blocks its
``single_transformer_blocks`` (``single_blocks``). In each, ``attention`` is the q/k/v projections and (double
blocks) the attention outputs of image and text; ``mlp`` the feed-forwards — in a single block ``proj_mlp`` and
``proj_out`` (kohya ``linear2``, the output of attention and MLP together); ``modulation`` the AdaLN linears
(kohya ``*_mod_lin`` / ``modulation_lin``). The layers are injected with diffusers' ``add_adapter``, so
``get_peft_model_state_dict(transformer)`` holds the LoRA and FluxPipeline's loaders read it back.
"""

from __future__ import annotations

from loraplug import LoraplugError, ModelBundle, RunContext
from loraplug_diffusion.adapter import ADAPTER_NAME, _float32_lora
from loraplug_diffusion.flux_options import FluxLoraOptions
from loraplug_diffusion.quiet import quiet_libraries

#: Block kind -> the transformer's module list of such blocks.
BLOCKS = {"double": "transformer_blocks", "single": "single_transformer_blocks"}
#: (block kind, group) -> module paths inside one block.
GROUPS: dict[tuple[str, str], tuple[str, ...]] = {
    ("double", "attention"): (
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    ),
    ("double", "mlp"): ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
    ("double", "modulation"): ("norm1.linear", "norm1_context.linear"),
    ("single", "attention"): ("attn.to_q", "attn.to_k", "attn.to_v"),
    ("single", "mlp"): ("proj_mlp", "proj_out"),
    ("single", "modulation"): ("norm.linear",),
}  # fmt: skip


def target_ranks(transformer: object, options: FluxLoraOptions) -> dict[str, int]:
    """Every adapted module's full path and its rank: a group's rank, else its block kind's, else ``r``."""
    targets: dict[str, int] = {}
    for kind in options.blocks:
        blocks = getattr(transformer, BLOCKS[kind])
        for group in options.targets:
            rank = options.ranks.get(group) or options.ranks.get(kind) or options.r
            for index in range(len(blocks)):
                for path in GROUPS[(kind, group)]:
                    targets[f"{BLOCKS[kind]}.{index}.{path}"] = rank
    return targets


def wrap(options: FluxLoraOptions, bundle: ModelBundle, ctx: RunContext) -> ModelBundle:
    quiet_libraries()
    from peft import LoraConfig

    transformer = bundle.components["transformer"]
    ranks = target_ranks(transformer, options)
    names = dict(transformer.named_modules())
    missing = [path for path in ranks if path not in names]
    if missing:
        raise LoraplugError(
            f"The Flux transformer has no module {missing[0]} (and {len(missing) - 1} more) that adapter.targets "
            "names: it is not shaped like diffusers' FluxTransformer2DModel",
            where="adapter.targets",
            fix="Load a FLUX.1 checkpoint in diffusers' layout (transformer/ with FluxTransformer2DModel)",
        )
    scale = options.alpha / options.r  # alpha follows each group's rank, so every layer's scale is the same
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        target_modules=sorted(ranks),
        rank_pattern={f"^{path}$": rank for path, rank in ranks.items() if rank != options.r},
        alpha_pattern={f"^{path}$": rank * scale for path, rank in ranks.items() if rank != options.r},
        lora_dropout=options.dropout,
        init_lora_weights=True if options.init == "default" else "gaussian",
    )
    transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    _float32_lora(transformer)
    return bundle
