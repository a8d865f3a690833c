"""The diffusion loss of one micro-batch: noise on the scheduler's schedule, epsilon or v targets, Min-SNR.

In training, noise and timesteps come from torch's seeded generator. In evaluation (``module`` not
training) each sample gets its own generator, seeded by the run's seed and the sample's id, so the same
sample always gets the same timestep and noise and validation losses compare across evaluations.
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
import torch.nn.functional as F

from loraplug import Batch, ModelBundle, RunContext, StepResult
from loraplug_diffusion.model import batch_latents, encode_text, trains_text_encoder
from loraplug_diffusion.options import StableDiffusionOptions
from loraplug_diffusion.sdxl_model import SDXL_KIND, predict


def _fixed_noise(
    latents: torch.Tensor, sample_ids: list[str], seed: int, timesteps: int, offset: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample noise and timestep, the same at every evaluation."""
    noise, steps = [], []
    for sample_id in sample_ids:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(sample_id.encode()))
        one = torch.randn(latents.shape[1:], generator=generator)
        if offset:
            one += offset * torch.randn((latents.shape[1], 1, 1), generator=generator)
        noise.append(one)
        steps.append(int(torch.randint(0, timesteps, (1,), generator=generator)))
    return (
        torch.stack(noise).to(latents.device, latents.dtype),
        torch.tensor(steps, device=latents.device, dtype=torch.long),
    )


def _random_noise(latents: torch.Tensor, timesteps: int, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn_like(latents)
    if offset:
        # Offset noise: a per-channel constant lets the model shift an image's overall brightness.
        noise += offset * torch.randn(
            (latents.shape[0], latents.shape[1], 1, 1), device=latents.device, dtype=latents.dtype
        )
    steps = torch.randint(0, timesteps, (latents.shape[0],), device=latents.device, dtype=torch.long)
    return noise, steps


def min_snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023), as diffusers' training scripts compute them."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def loss_sum(model: ModelBundle, module: Any, batch: Batch, ctx: RunContext) -> StepResult:
    options = ctx.recipe.model.options
    assert isinstance(options, StableDiffusionOptions)  # noqa: S101
    scheduler = model.components["noise_scheduler"]
    inputs = batch.inputs
    latents = batch_latents(model, inputs)
    total = scheduler.config.num_train_timesteps
    if module.training:
        noise, timesteps = _random_noise(latents, total, options.noise_offset)
    else:
        noise, timesteps = _fixed_noise(latents, batch.sample_ids, ctx.seed, total, options.noise_offset)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = (
        noise
        if scheduler.config.prediction_type == "epsilon"
        else scheduler.get_velocity(latents, noise, timesteps)
    )

    if model.kind == SDXL_KIND:  # two encoders, pooled embedding, size conditioning
        prediction = predict(model, module, inputs, noisy, timesteps)
    elif "encoder_hidden_states" in inputs:
        prediction = module(noisy, timesteps, encoder_hidden_states=inputs["encoder_hidden_states"])
    elif trains_text_encoder(model):
        prediction = module(noisy, timesteps, input_ids=inputs["input_ids"])
    else:
        with torch.no_grad():
            states = encode_text(model.components["text_encoder"], inputs["input_ids"])
        prediction = module(noisy, timesteps, encoder_hidden_states=states)

    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if options.min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weights(scheduler, timesteps, options.min_snr_gamma)
    return StepResult(loss_sum=per_sample.sum(), num_targets=latents.shape[0])
