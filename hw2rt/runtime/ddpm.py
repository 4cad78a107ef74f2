"""The ancestral DDPM loop, and classifier-free guidance (HW2 Problem 1, digits).

The raw digit network is ``eps = model_fn(x, c, t_frac, mask)`` (the public "conditional
diffusion MNIST" signature: c int64 labels [B], t_frac = t/T float32 [B], mask float32 [B] with
1.0 = class dropped; an Engine called positionally is one). ``guided_denoiser`` closes over the
labels and the guidance weight and gives the ``denoiser(x, t)`` both loops call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hw2rt.runtime.ddim import Callback, Denoiser, predicted_x0
from hw2rt.runtime.noise import NoiseFn, draw, global_noise
from hw2rt.runtime.schedules import Schedule

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided_denoiser(model_fn: ModelFn, w: float, c: torch.Tensor, T: int) -> Denoiser:
    """Classifier-free guidance for labels ``c`` [B]: ``eps = (1+w)*eps_cond - w*eps_uncond``.

    Both halves come from ONE call on the doubled batch ``[cond; uncond]``: one engine launch per
    step instead of two, which is what the engines' batch limits are sized for. ``T`` turns the
    raw timestep into the network's ``t / T``.
    """
    c = c.to(torch.int64)

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if c.shape != (batch,):
            raise ValueError(f"need one class label per image: c has shape {tuple(c.shape)}, "
                             f"x {tuple(x.shape)}")
        # t/T in float64 then fp32: the same value as the reference's Python `i / n_T`.
        t_frac = (t.to(torch.float64) / T).to(torch.float32)
        mask = torch.cat([torch.zeros(batch, device=x.device), torch.ones(batch, device=x.device)])
        labels = c.to(x.device)
        eps = model_fn(torch.cat([x, x]), torch.cat([labels, labels]), torch.cat([t_frac, t_frac]), mask)
        eps = eps.to(torch.float32)
        return (1.0 + w) * eps[:batch] - w * eps[batch:]

    return denoiser


def ancestral_step(x: torch.Tensor, eps: torch.Tensor, one_over_sqrt_alpha: float, eps_coef: float,
                   sigma: float, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One step x_t -> x_{t-1}: ``(x - eps*(1-alpha_t)/sqrt(1-abar_t))/sqrt(alpha_t) + sqrt(beta_t)*z``.

    ``noise=None`` means z = 0 (the posterior mean; what the last step, t = 1, uses).
    """
    x_prev = one_over_sqrt_alpha * (x - eps_coef * eps)
    if noise is not None:
        if noise.shape != x.shape:  # a [1, C, H, W] z would broadcast silently to the batch
            raise ValueError(f"noise shape {tuple(noise.shape)} != x shape {tuple(x.shape)}")
        x_prev = x_prev + sigma * noise
    return x_prev


def ancestral_coefficients(schedule: Schedule) -> tuple[list[float], list[float], list[float]]:
    """Per timestep: 1/sqrt(alpha_t), (1-alpha_t)/sqrt(1-abar_t) and sqrt(beta_t), derived from the
    float64 tables and read in the schedule's precision."""
    return (schedule.read(1.0 / schedule.alphas.sqrt()),
            schedule.read((1.0 - schedule.alphas) / (1.0 - schedule.abar).sqrt()),
            schedule.read(schedule.betas.sqrt()))


def ancestral_sample(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, timesteps: Sequence[int], *,
                     noise: NoiseFn | None = None, callback: Callback | None = None) -> torch.Tensor:
    """The assignment's DDPM sampler over consecutive ``timesteps``
    (``schedule.timesteps(schedule.T)``: T..1).

    z is drawn for every step but t = 1 (z = 0 there) from ``noise(step_index)``
    (`noise.seeded_noise`: one source per image, results then do not depend on the batch
    layout), else from torch's global generator. ``callback(step_index, t, x, x0)`` runs after
    every step with x = x_{t-1} and the step's predicted clean image (not used by the update).
    """
    timesteps = list(timesteps)
    if (not timesteps or timesteps != list(range(timesteps[0], timesteps[0] - len(timesteps), -1))
            or timesteps[-1] < 1):
        raise ValueError("the ancestral sampler steps through consecutive timesteps down to 1 or above")
    one_over_sqrt_alpha, eps_coef, sigma = ancestral_coefficients(schedule)
    abar = schedule.read(schedule.abar) if callback is not None else None
    x = x.to(torch.float32)
    noise = noise or global_noise(x)
    for i, t in enumerate(timesteps):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        eps = denoiser(x, t_batch).to(torch.float32)
        z = draw(noise, i, x) if t > 1 else None
        x_t = x
        x = ancestral_step(x, eps, one_over_sqrt_alpha[t], eps_coef[t], sigma[t], z)
        if callback is not None:
            callback(i, t, x, predicted_x0(x_t, eps, abar[t]))
    return x
