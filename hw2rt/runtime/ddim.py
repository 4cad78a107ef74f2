"""The DDIM loop (both problems: the face UNet's schedule, and the digit DDPM sampled in fewer steps).

k-diffusion style: a short function over a denoiser callable ``eps = denoiser(x, t)`` (``x`` fp32
[B, C, H, W], ``t`` int64 [B] raw timesteps; any conditioning lives inside the denoiser's
closure), a `Schedule`, its timesteps and a noise source. It never sees an engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from hw2rt.runtime.noise import NoiseFn, draw, global_noise
from hw2rt.runtime.schedules import Schedule

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# callback(step_index, t, x, x0): after every step, the new latent and the step's predicted clean image
# (k-diffusion's "denoised"). Parity's trajectory compares both, step by step.
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def check_eta(eta: float) -> float:
    """eta is the DDIM noise scale: a finite number >= 0 (ValueError otherwise, NaN included)."""
    if not (eta >= 0.0 and math.isfinite(eta)):
        raise ValueError(f"eta must be >= 0 and finite (got {eta:g})")
    return eta


def predicted_x0(x: torch.Tensor, eps: torch.Tensor, abar_t: float, clip: bool = True) -> torch.Tensor:
    """The clean image the network predicts at x_t; with `clip`, clamped to the training range [-1, 1]."""
    # The networks were trained on images in [-1, 1]; clamping x0 keeps early, noisy predictions
    # from throwing the trajectory out of range (the GT faces rely on it). It is diffusers' dynamic
    # thresholding with sample_max_value = 1, where the per-image threshold is always 1.
    x0 = (x - math.sqrt(1.0 - abar_t) * eps) / math.sqrt(abar_t)
    return x0.clamp(-1.0, 1.0) if clip else x0


def ddim_step(x: torch.Tensor, eps: torch.Tensor, abar_t: float, abar_prev: float, *, eta: float = 0.0,
              noise: torch.Tensor | None = None, clip: bool = True) -> torch.Tensor:
    """One DDIM update x_t -> x_prev (DDIM paper eq. 12; with `clip`, x0 clamped to [-1, 1]).

    ``abar_t`` and ``abar_prev`` are Python floats; every coefficient is derived in float64 and
    becomes fp32 only when it multiplies the fp32 tensors.
    """
    sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * math.sqrt(1.0 - abar_t / abar_prev)
    x0 = predicted_x0(x, eps, abar_t, clip)
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(1.0 - abar_prev - sigma**2) * eps
    if sigma > 0.0:
        if noise is None:
            raise ValueError("eta > 0 needs noise for this step")
        if noise.shape != x.shape:  # a [1, C, H, W] z would broadcast silently to the batch
            raise ValueError(f"noise shape {tuple(noise.shape)} != x shape {tuple(x.shape)}")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_sample(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, timesteps: Sequence[int], *,
                eta: float = 0.0, noise: NoiseFn | None = None, clip: bool = True,
                callback: Callback | None = None) -> torch.Tensor:
    """DDIM from noise ``x`` over ``timesteps`` (descending, e.g. ``schedule.timesteps(50)``).

    The step after the smallest timestep goes to index 0 (``abar[0] = 0.9999``, not 1, as in the
    GT recipe). For ``eta > 0`` the step's z is ``noise(step_index)`` (`noise.seeded_noise`: one
    source per image), else torch's global generator (results then depend on the batch layout).
    ``callback(step_index, t, x, x0)`` runs after every step with the new x and the step's x0.
    ``clip`` clamps every predicted x0 to [-1, 1] (the face recipe's rule).
    """
    check_eta(eta)
    timesteps = list(timesteps)
    if not timesteps:
        raise ValueError("no timesteps to sample")
    abar = schedule.read(schedule.abar)
    x = x.to(torch.float32)  # noise files may be any float dtype; the recipe runs in fp32
    if eta > 0.0 and noise is None:
        noise = global_noise(x)
    for i, (t, t_prev) in enumerate(zip(timesteps, timesteps[1:] + [0], strict=True)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        eps = denoiser(x, t_batch).to(torch.float32)  # an fp16 engine may hand back fp16 eps
        z = draw(noise, i, x) if eta > 0.0 else None
        x_t = x
        x = ddim_step(x, eps, abar[t], abar[t_prev], eta=eta, noise=z, clip=clip)
        if callback is not None:
            callback(i, t, x, predicted_x0(x_t, eps, abar[t], clip))
    return x
