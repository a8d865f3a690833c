"""LoHa and LoKr in LyCORIS' file layout: peft's layers written as ComfyUI, AUTOMATIC1111 and LyCORIS read them.

A module's tensors sit under its kohya name (``lora_unet_…``, ``lora_te_…``, as for LoRA) with LyCORIS'
suffixes, which are also peft's parameter names:

* LoHa: ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (and ``hada_t1``, ``hada_t2`` for a
  Tucker-decomposed convolution), ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) · alpha / rank.
* LoKr: ``lokr_w1`` or its factors ``lokr_w1_a``, ``lokr_w1_b``; ``lokr_w2`` or ``lokr_w2_a``, ``lokr_w2_b``
  (and ``lokr_t2``); ΔW = w1 ⊗ w2 · alpha / rank.

Readers take the rank from the file (comfy/weight_adapter/loha.py and lokr.py, A1111's network_hada.py and
network_lokr.py): LoHa's is ``hada_w1_b.shape[0]``; LoKr's is ``lokr_w2_b.shape[0]`` when w2 is factored,
else ``lokr_w1_b.shape[0]``, and with neither factored no ``alpha`` applies (a scale of 1). peft scales by
its ``alpha / r`` in every case, and its factors have ``r`` rows, so the files agree — except for a LoKr
layer with both matrices whole, whose scale is folded into ``lokr_w1`` and whose ``alpha`` is written as
``r`` (what LyCORIS itself writes there). :func:`delta_weight` computes ΔW from a file's tensors as those
readers do; the kohya export loads its own file back with it and checks the result against the trained model.
"""

from __future__ import annotations

from typing import Any

import torch

ADAPTER = "default"
LOHA_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARTS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
#: ``ss_network_args`` ``algo`` of each, as LyCORIS' kohya module names them.
ALGOS = {"LoHaLayer": "loha", "LoKrLayer": "lokr"}


def algo(layer: Any) -> str | None:
    """``"loha"`` or ``"lokr"`` for a peft LoHa/LoKr layer holding the adapter; None for anything else."""
    name = next((ALGOS[c.__name__] for c in type(layer).__mro__ if c.__name__ in ALGOS), None)
    if name is None or ADAPTER not in getattr(layer, "_available_adapters", ()):
        return None
    return name


def layer_tensors(layer: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A peft LoHa/LoKr layer's tensors by LyCORIS suffix (``hada_w1_a``, …, ``alpha``), in ``dtype`` on the CPU."""
    parts = LOHA_PARTS if algo(layer) == "loha" else LOKR_PARTS
    tensors = {
        part: getattr(layer, part)[ADAPTER].detach().float().cpu()
        for part in parts
        if ADAPTER in getattr(layer, part)
    }
    r, alpha = layer.r[ADAPTER], float(layer.alpha[ADAPTER])
    if "lokr_w1" in tensors and "lokr_w2" in tensors:
        # Readers apply no alpha to a LoKr with both matrices whole; peft scales it by alpha/r.
        tensors["lokr_w1"] = tensors["lokr_w1"] * (alpha / r)
        alpha = float(r)
    out = {part: tensor.to(dtype).contiguous() for part, tensor in tensors.items()}
    out["alpha"] = torch.tensor(alpha, dtype=dtype)
    return out


def _cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    # A Tucker core and its two factors, as LyCORIS and ComfyUI rebuild them.
    return torch.einsum("i j k l, j r, i p -> p r k l", t, wb, wa)


def delta_weight(tensors: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """ΔW of one module from its LyCORIS tensors (suffix → tensor), in float32, as ComfyUI computes it."""
    w = {k: v.float() for k, v in tensors.items()}
    alpha = float(w["alpha"]) if "alpha" in w else None
    if "hada_w1_a" in w:
        if "hada_t1" in w:
            m1, m2 = (
                _cp(w["hada_t1"], w["hada_w1_a"], w["hada_w1_b"]),
                _cp(w["hada_t2"], w["hada_w2_a"], w["hada_w2_b"]),
            )
        else:
            m1, m2 = w["hada_w1_a"] @ w["hada_w1_b"], w["hada_w2_a"] @ w["hada_w2_b"]
        scale = alpha / w["hada_w1_b"].shape[0] if alpha is not None else 1.0
        return (m1 * m2).reshape(shape) * scale
    dim = None
    if "lokr_w1" in w:
        w1 = w["lokr_w1"]
    else:
        dim = w["lokr_w1_b"].shape[0]
        w1 = w["lokr_w1_a"] @ w["lokr_w1_b"]
    if "lokr_w2" in w:
        w2 = w["lokr_w2"]
    else:
        dim = w["lokr_w2_b"].shape[0]
        w2 = (
            _cp(w["lokr_t2"], w["lokr_w2_a"], w["lokr_w2_b"])
            if "lokr_t2" in w
            else w["lokr_w2_a"] @ w["lokr_w2_b"]
        )
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    scale = alpha / dim if alpha is not None and dim is not None else 1.0
    return torch.kron(w1, w2).reshape(shape) * scale


def by_module(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A LyCORIS file's tensors grouped by module name: ``{"lora_unet_…": {"hada_w1_a": …, "alpha": …}}``."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        modules.setdefault(name, {})[part] = tensor
    return modules


@torch.no_grad()
def add_deltas(
    parts: dict[str, torch.nn.Module], modules: dict[str, dict[str, torch.Tensor]], name_of: Any
) -> int:
    """Add each module's ΔW to the weight of the layer it names in ``parts``; how many layers were changed.

    :param parts: the modules to patch by kohya prefix (``{"lora_unet": unet, "lora_te": text_encoder}``).
    :param name_of: ``name_of(prefix, module_path)``: a layer's kohya name.
    :raises KeyError: naming a module of the file that no layer has.
    """
    layers = {
        name_of(prefix, path): layer
        for prefix, part in parts.items()
        for path, layer in part.named_modules()
        if isinstance(getattr(layer, "weight", None), torch.Tensor)
    }
    for name, tensors in modules.items():
        layer = layers[name]
        layer.weight += delta_weight(tensors, layer.weight.shape).to(layer.weight.device, layer.weight.dtype)
    return len(modules)
