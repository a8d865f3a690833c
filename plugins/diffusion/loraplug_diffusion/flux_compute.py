"""Flux's flow-matching loss of one micro-batch (rectified flow, as diffusers' and kohya's Flux scripts train it).

x_t = (1 − σ)·x₀ + σ·ε, the transformer predicts the velocity ε − x₀, the loss is its mean squared error,
weighted per sample by ``loss_weighting``. σ is drawn as u ~ U(0, 1) pushed through the density's inverse
CDF (``logit_normal``: sigmoid(mean + std·Φ⁻¹(u)), SD3's and kohya's ``sigmoid``; or uniform), then shifted
towards noise — by μ linear in the image's token count for ``shift = "resolution"`` (FluxPipeline's
``calculate_shift`` with the scheduler's base/max shift; kohya's ``flux_shift``), or by a fixed s.
In evaluation each sample's u and noise come from its own seeded generator (compute.py's ``_fixed_noise``),
so validation losses compare across evaluations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from loraplug import Batch, ModelBundle, RunContext, StepResult
from loraplug_diffusion.compute import _fixed_noise
from loraplug_diffusion.flux_model import encode_ids, pack
from loraplug_diffusion.flux_options import FluxOptions
from loraplug_diffusion.model import batch_latents

#: Levels of u in evaluation: u = (k + ½)/LEVELS for the sample's fixed k.
LEVELS = 1000


def density(u: torch.Tensor, options: FluxOptions) -> torch.Tensor:
    """σ before shifting, from u uniform in (0, 1)."""
    if options.timestep_sampling == "uniform":
        return u
    return torch.sigmoid(options.logit_mean + options.logit_std * torch.special.ndtri(u))


def shifted(sigmas: torch.Tensor, options: FluxOptions, scheduler_config: Any, tokens: int) -> torch.Tensor:
    """σ shifted towards noise: the larger the image (more tokens), the more, for ``resolution``."""
    if options.shift == "none":
        return sigmas
    if options.shift == "resolution":
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(
            tokens,
            scheduler_config.get("base_image_seq_len", 256),
            scheduler_config.get("max_image_seq_len", 4096),
            scheduler_config.get("base_shift", 0.5),
            scheduler_config.get("max_shift", 1.15),
        )
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    s = float(options.shift)
    return s * sigmas / (1 + (s - 1) * sigmas)


def sample_sigmas(
    latents: torch.Tensor,
    batch: Batch,
    options: FluxOptions,
    scheduler_config: Any,
    *,
    seed: int,
    fixed: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise like ``latents``, σ per sample); ``fixed``: the same for a sample at every evaluation."""
    if fixed:
        noise, steps = _fixed_noise(latents, batch.sample_ids, seed, LEVELS, 0.0)
        u = (steps.double() + 0.5) / LEVELS
    else:
        noise = torch.randn_like(latents)
        u = torch.rand(latents.shape[0], device=latents.device, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
    tokens = (latents.shape[2] // 2) * (latents.shape[3] // 2)
    sigmas = shifted(density(u, options), options, scheduler_config, tokens)
    return noise, sigmas.to(latents.device, torch.float32)


def loss_sum(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    options = ctx.recipe.model.options
    assert isinstance(options, FluxOptions)  # noqa: S101
    inputs = batch.inputs
    latents = batch_latents(model, inputs)
    if "encoder_hidden_states" in inputs:
        states, pooled = inputs["encoder_hidden_states"], inputs["pooled"]
    else:
        with torch.no_grad():
            text = encode_ids(model, inputs["input_ids"], inputs["input_ids_2"])
        states, pooled = text["states"], text["pooled"]

    scheduler_config = model.components["noise_scheduler"].config
    noise, sigmas = sample_sigmas(
        latents, batch, options, scheduler_config, seed=ctx.seed, fixed=not module.training
    )
    s = sigmas.view(-1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    packed, img_ids = pack(noisy)
    target, _ = pack(noise - latents)
    transformer = model.components["transformer"]
    guidance = (
        torch.full((latents.shape[0],), options.guidance, device=latents.device, dtype=torch.float32)
        if transformer.config.guidance_embeds
        else None
    )
    prediction = module(
        packed, sigmas, states.to(latents.device), pooled.to(latents.device), img_ids, guidance
    )
    per_sample = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2))
    weights = compute_loss_weighting_for_sd3(options.loss_weighting, sigmas)
    return StepResult(loss_sum=(per_sample * weights).sum(), num_targets=latents.shape[0])
