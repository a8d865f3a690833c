"""The causal-LM loss without the full logits: the output head applied to chunks of target tokens.

A 128k-word vocabulary (Llama 3) makes the float32 logits of one 8k-token micro-batch 4 GiB, and the
backward needs as much again. Here the model is asked for its last hidden state instead
(``output_hidden_states``, with ``logits_to_keep=1`` so that its own head projects one position only),
and the head — followed by what the architecture does to its output: Gemma's soft-capping, Cohere's
and Granite's scaling — is applied to ``chunk`` target tokens at a time under
``torch.utils.checkpoint``. Each chunk's logits live only while its loss is computed and are computed
again in the backward, so peak memory is one chunk's logits whatever the number of tokens; the price
is one more pass of the head's matmul per step. The head runs under the autocast state the model's
forward gave it (a pre-hook records it), so mixed precision rounds as in the plain path.

The sum is the plain path's to float32 rounding: the same head on the same hidden states, the same
float32 cross-entropy per token, summed in another order. That the head's output (transformed) is
what the model's forward returns as logits is checked on the model itself, on a few tokens, before
its first chunked step (:func:`check`); an architecture that changes its logits in a way not listed
here, or a wrapper that shards the head's weights (FSDP, DeepSpeed), is computed plain.

Where the head is a plain weight matrix (no LoRA on it, not trained in full through ``modules_to_save``,
nothing done to its output), ``"auto"`` hands the summed loss to a fused kernel that computes each
chunk's gradients in the forward, so the head's matmul is not run again in the backward
(:func:`fused_kernel`): Liger Kernel's fused linear cross-entropy on CUDA when ``liger-kernel`` is
installed, else ``torch.nn.functional.linear_cross_entropy`` (torch 2.13+) in float32 without autocast
(where it rounds as the plain path does). Per-token losses (the preference objectives) and every other
case use the checkpointed chunks.

Imported by hook bodies only (it imports torch).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from loraplug_causal_lm.encode import IGNORE

#: ``model.loss_chunk_tokens``: a number of target tokens per chunk, 0 (never chunk) or ``"auto"``.
ChunkSetting = int | Literal["auto"]
#: Auto: the loss is chunked when a micro-batch's logits would hold more numbers than this
#: (512 MiB in float32, e.g. 1,047 tokens of a 128k vocabulary, 4,096 of a 32k one).
AUTO_ABOVE = 2**27
#: Auto: numbers in one chunk's logits (256 MiB in float32): 523 tokens of Llama 3's 128,256 words.
CHUNK_NUMBERS = 2**26
#: Relative difference of the probe's logits accepted as equal: float32 rounding of one matmul, or
#: half precision's (the same matmul on the same inputs; the shapes may differ from the model's).
FLOAT32_TOLERANCE = 1e-5
HALF_TOLERANCE = 1e-2
#: Wrappers that shard parameters and gather them only inside their own forward: the head called
#: outside it would see a shard, so such modules are computed plain.
SHARDING_WRAPPERS = ("FullyShardedDataParallel", "DeepSpeedEngine")
#: How the loss of a chunked micro-batch is computed: loraplug's checkpointed chunks, torch's fused
#: ``linear_cross_entropy``, or Liger Kernel's ``LigerFusedLinearCrossEntropyLoss`` (CUDA).
Kernel = Literal["chunks", "torch", "liger"]
#: What the run's log says about each kernel.
KERNEL_NAMES: dict[str, str] = {
    "chunks": "loraplug's checkpointed chunks (the head run again in the backward)",
    "torch": "torch.nn.functional.linear_cross_entropy (each chunk's gradients computed in the forward)",
    "liger": "Liger Kernel's fused linear cross-entropy (each chunk's gradients computed in the forward)",
}


@dataclass(frozen=True)
class Autocast:
    """The autocast state the model's forward called its head under, replayed for the chunks."""

    device_type: str
    enabled: bool
    dtype: Any

    def __call__(self) -> Any:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


@dataclass
class Head:
    """A causal LM's output head as the chunked loss uses it, or why it cannot be.

    :param module: the output projection (``lm_head``, or peft's ``ModulesToSaveWrapper`` around it).
    :param transforms: what the architecture's forward does to the projection's output, in order.
    :param vocab: the width of the logits.
    :param problem: why the loss of this model is computed plain, or ``None``.
    :param checked: whether :func:`check` has run on the model.
    :param warned: whether the user was told that the loss is computed plain.
    :param announced: whether the user was told how the chunked loss is computed.
    """

    module: Any
    transforms: tuple[Callable[[Any], Any], ...]
    vocab: int
    problem: str | None = None
    checked: bool = field(default=False, compare=False)
    warned: bool = field(default=False, compare=False)
    announced: bool = field(default=False, compare=False)

    def logits(self, hidden: Any) -> Any:
        logits = self.module(hidden)
        for transform in self.transforms:
            logits = transform(logits)
        return logits

    def cross_entropy(self, hidden: Any, labels: Any, reduction: str) -> Any:
        # As the plain path: the logits in the model's dtype, upcast to float32 for the loss.
        return F.cross_entropy(self.logits(hidden).float(), labels, reduction=reduction)


#: Each module's head, found and checked once (keyed by the module object the loop calls).
_HEADS: weakref.WeakKeyDictionary[Any, Head] = weakref.WeakKeyDictionary()


def chunk_tokens(setting: ChunkSetting, positions: int, vocab: int) -> int:
    """Target tokens per chunk for a micro-batch of ``positions`` tokens; 0: compute the loss plain."""
    if setting == "auto":
        return max(1, CHUNK_NUMBERS // vocab) if positions * vocab > AUTO_ABOVE else 0
    return setting


def head_of(module: Any, *, checked: bool = True) -> Head:
    """The output head of ``module`` (plain, DDP- or PEFT-wrapped), found once.

    ``checked``: also :func:`check` it on the model, once (two forwards of a few tokens); without,
    only what the module's structure says (enough for the vocabulary size).
    """
    head = _HEADS.get(module)
    if head is None:
        head = _HEADS[module] = _find(module)
    if checked and not head.checked:
        head.checked = True
        if head.problem is None:
            head.problem = check(module, head)
    return head


def _unwrap(module: Any) -> Any:
    """The transformers model inside DDP and peft (whose LoRA layers live inside it)."""
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(module, DistributedDataParallel):
        module = module.module
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def _sharded(module: Any) -> str | None:
    for inner in (module, getattr(module, "module", None)):
        name = type(inner).__name__
        if any(wrapper in name for wrapper in SHARDING_WRAPPERS) or name.startswith("FSDP"):
            return name
    return None


def _find(module: Any) -> Head:
    model = _unwrap(module)
    config: Any = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab = int(getattr(text_config, "vocab_size", 0) or 0)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = Head(head, _transforms(text_config), vocab)
    if (wrapper := _sharded(module)) is not None:
        found.problem = (
            f"{wrapper} shards the output head's weights, which it gathers only inside the model's forward"
        )
    elif head is None or not vocab:
        found.problem = (
            f"{type(model).__name__} names no output head (get_output_embeddings) or vocabulary size"
        )
    elif "logits_to_keep" not in inspect.signature(model.forward).parameters:
        found.problem = f"{type(model).__name__}.forward takes no logits_to_keep, so it would compute the full logits anyway"
    return found


def _transforms(config: Any) -> tuple[Callable[[Any], Any], ...]:
    """What transformers' causal LMs do to the head's output before returning it as logits."""
    steps: list[Callable[[Any], Any]] = []
    scale = getattr(config, "logit_scale", None)  # Cohere: logits * logit_scale
    if isinstance(scale, (int, float)) and scale != 1:
        steps.append(lambda logits: logits * scale)
    scaling = getattr(config, "logits_scaling", None)  # Granite: logits / logits_scaling
    if isinstance(scaling, (int, float)) and scaling != 1:
        steps.append(lambda logits: logits / scaling)
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2 and 3: cap · tanh(logits / cap)
    if isinstance(cap, (int, float)) and cap:
        steps.append(lambda logits: torch.tanh(logits / cap) * cap)
    return tuple(steps)


def last_hidden_state(module: Any, head: Head, inputs: dict[str, Any]) -> tuple[Any, Autocast]:
    """The model's last hidden state (what its head projects) for ``inputs``, and the head's autocast state.

    ``logits_to_keep=1``: the model's own head projects the last position only, and that one row of
    logits is dropped; the hidden states of the other layers are references to activations the
    backward keeps anyway.
    """
    seen: list[Autocast] = []

    def remember(_module: Any, args: tuple[Any, ...]) -> None:
        kind = args[0].device.type if args and isinstance(args[0], torch.Tensor) else "cpu"
        seen.append(Autocast(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)))

    handle = head.module.register_forward_pre_hook(remember)
    try:
        hidden = module(**inputs, use_cache=False, output_hidden_states=True, logits_to_keep=1).hidden_states[
            -1
        ]
    finally:
        handle.remove()
    device_type = hidden.device.type
    autocast = (
        seen[-1]
        if seen
        else Autocast(
            device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
        )
    )
    return hidden, autocast


def check(module: Any, head: Head) -> str | None:
    """Whether the head (with its transforms) gives the logits the model's forward returns; why not.

    Two forwards of a few tokens in eval mode, like packing's start-up check: whatever the
    architecture, a model whose logits are not ``head(last hidden state)`` fails here and trains on
    the plain path instead of on a wrong loss.
    """
    parameter = next(module.parameters())
    ids = (torch.arange(3, 12) % head.vocab)[None].to(parameter.device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            logits = module(input_ids=ids, use_cache=False).logits
            hidden, autocast = last_hidden_state(module, head, {"input_ids": ids})
            with autocast():
                chunked = head.logits(hidden)
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else ""
        return f"the model does not give its last hidden state as the chunked loss asks ({type(exc).__name__}: {message})"
    finally:
        module.train(was_training)
    if chunked.shape != logits.shape:
        return (
            f"its output head gives logits of shape {tuple(chunked.shape)}, its forward {tuple(logits.shape)}"
        )
    exact = parameter.dtype == torch.float32 and logits.dtype == torch.float32 and not autocast.enabled
    tolerance = FLOAT32_TOLERANCE if exact else HALF_TOLERANCE
    scale = max(1.0, float(logits.float().abs().max()))
    difference = float((chunked.float() - logits.float()).abs().max())
    if difference > tolerance * scale:
        return (
            f"{type(_unwrap(module)).__name__} changes the logits after its output head in a way loraplug does not know "
            f"(they differ by {difference:.3g} from the head's output)"
        )
    return None


@cache
def _liger_loss() -> type | None:
    """Liger Kernel's fused linear cross-entropy module, where ``liger-kernel`` (and Triton) import."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except (ImportError, RuntimeError, OSError):  # not installed, or no Triton / CUDA to load it with
        return None
    return LigerFusedLinearCrossEntropyLoss  # type: ignore[no-any-return]


def fused_kernel(head: Head, hidden: Any, autocast: Autocast) -> tuple[Kernel, str | None]:
    """The kernel for the summed loss of ``head`` on ``hidden``, and why no fused kernel, if none.

    A fused kernel takes the head's weight matrix (and bias) itself, so it applies only where the head
    is a plain ``torch.nn.Linear``: a LoRA on the head or a copy trained in full (``modules_to_save``)
    wraps it in another module, and a transform of its output (soft-capping, scaling) or a hook on it
    (accelerate's offloading) would be skipped. torch's kernel accumulates in float32 with its own
    rounding of half-precision logits, so it is used on float32 only, without autocast (equal to the
    plain path to float32 rounding there); Liger is used on CUDA in any precision (its loss and
    gradients against the plain path: part f of bench/gpu_check.py).
    """
    module = head.module
    if type(module) is not torch.nn.Linear:
        return "chunks", (
            f"the output head is a {type(module).__name__}, not a plain Linear "
            "(a LoRA on the head, or the head trained in full through modules_to_save)"
        )
    if head.transforms:
        return "chunks", "the architecture changes the head's output (logit soft-capping or scaling)"
    if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
        return (
            "chunks",
            "the output head has hooks (e.g. accelerate's offloading), which a fused kernel would skip",
        )
    if hidden.device.type == "cuda" and _liger_loss() is not None:
        return "liger", None
    if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        return "chunks", f"torch {torch.__version__} has no nn.functional.linear_cross_entropy (2.13+ has)"
    if autocast.enabled or hidden.dtype != torch.float32 or module.weight.dtype != torch.float32:
        precision = f"autocast to {autocast.dtype}" if autocast.enabled else f"{module.weight.dtype}"
        return "chunks", (
            f"the head runs in {precision}; torch's linear_cross_entropy is used on float32 only, "
            "where it rounds as the full logits do"
        )
    return "torch", None


def loss_kernel(
    head: Head,
    hidden: Any,
    autocast: Autocast,
    setting: ChunkSetting,
    chunk: int,
    info: Callable[[str], None] | None,
) -> Kernel:
    """The kernel for a chunked micro-batch's summed loss: a fused one where ``"auto"`` finds one that
    applies, loraplug's checkpointed chunks for a number of tokens (exactly what it asks for) or
    elsewhere. Said once per model through ``info``."""
    kernel, why = fused_kernel(head, hidden, autocast) if setting == "auto" else ("chunks", None)
    if not head.announced and info is not None:
        size = f"chunks of {chunk} tokens" if kernel != "liger" else "chunks Liger sizes"
        info(f"loss: {KERNEL_NAMES[kernel]}, {size}" + (f"; no fused kernel: {why}" if why else ""))
        head.announced = True
    return kernel


def fused_cross_entropy(
    kernel: Kernel, head: Head, hidden: Any, labels: Any, chunk: int, autocast: Autocast
) -> Any:
    """The summed float32 cross-entropy of the target tokens by a fused kernel (see :func:`fused_kernel`).

    Only the target rows are passed (as the chunked path does), ``chunk`` of them at a time for torch's
    kernel; Liger sizes its own chunks.
    """
    targets = labels != IGNORE
    hidden, labels = hidden[targets], labels[targets]
    module = head.module
    if kernel == "liger":
        loss_class = _liger_loss()
        assert loss_class is not None  # fused_kernel chose it because it imports
        with autocast():
            return loss_class(reduction="sum")(module.weight, hidden, labels, module.bias)
    options = torch.nn.LinearCrossEntropyOptions(chunking_method=None, batch_chunk_size=max(1, chunk))
    return F.linear_cross_entropy(
        hidden, module.weight, labels, linear_bias=module.bias, reduction="sum", options=options
    )


def target_cross_entropy(
    head: Head, hidden: Any, labels: Any, chunk: int, autocast: Autocast, *, reduction: str = "sum"
) -> Any:
    """Float32 cross-entropy of the target tokens (``labels != IGNORE``), ``chunk`` tokens at a time.

    ``reduction="sum"``: the summed loss (a scalar); ``"none"``: one loss per target token, in the
    order of ``hidden[labels != IGNORE]`` (for per-sequence log-probabilities). With gradients on,
    each chunk is checkpointed: its logits are dropped after the forward and recomputed in the
    backward (non-reentrant, so DDP sees one gradient per parameter; the RNG state is replayed, so a
    dropout in the head draws the same mask twice).
    """
    targets = labels != IGNORE
    hidden, labels = hidden[targets], labels[targets]

    def part(h: Any, y: Any) -> Any:
        with autocast():
            return head.cross_entropy(h, y, reduction)

    parts = []
    for start in range(0, max(len(labels), 1), chunk):  # at least one (empty) chunk: a loss in the graph
        h, y = hidden[start : start + chunk], labels[start : start + chunk]
        parts.append(checkpoint(part, h, y, use_reentrant=False) if torch.is_grad_enabled() else part(h, y))
    if reduction == "none":
        return torch.cat(parts)
    total = parts[0]
    for other in parts[1:]:
        total = total + other
    return total
