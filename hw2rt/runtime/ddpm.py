"""Ancestral DDPM sampling with classifier-free guidance (HW2 Problem 1, digits).

The raw digit network is ``eps = model_fn(x, c, t_frac, mask)`` (the public
"conditional diffusion MNIST" signature: c int64 labels [B], t_frac = t/T float32
[B], mask float32 [B] with 1.0 = class dropped). ``guided_denoiser`` turns it into
the ``denoiser(x, t, c)`` the sampler calls; the sampler itself never sees the
mask, the guidance weight or the engine behind the callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hw2rt.runtime.ddim import NoiseFn, ddim_step, global_noise, seeded_noise
from hw2rt.runtime.schedules import DDPM_T, DDPMSchedule, ddpm_schedule

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
GuidedDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]


def guided_denoiser(model_fn: ModelFn, w: float, T: int = DDPM_T) -> GuidedDenoiser:
    """Classifier-free guidance: ``eps = (1+w)*eps_cond - w*eps_uncond``.

    Both halves come from ONE call on the doubled batch ``[cond; uncond]``: one
    engine launch per step instead of two, which is what the batch profiles of
    the engines are sized for.
    """

    def denoiser(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        # t/T in float64 then fp32: the same value as the reference's Python `i / n_T`.
        t_frac = (t.to(torch.float64) / T).to(torch.float32)
        mask = torch.cat([torch.zeros(batch, device=x.device), torch.ones(batch, device=x.device)])
        eps = model_fn(
            torch.cat([x, x]),
            torch.cat([c, c]).to(torch.int64),
            torch.cat([t_frac, t_frac]),
            mask,
        ).to(torch.float32)
        eps_cond, eps_uncond = eps[:batch], eps[batch:]
        return (1.0 + w) * eps_cond - w * eps_uncond

    return denoiser


def ddpm_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    schedule: DDPMSchedule,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1}: ``(x - eps*(1-alpha_t)/sqrt(1-abar_t))/sqrt(alpha_t) + sqrt(beta_t)*z``.

    ``noise=None`` means z = 0 (the posterior mean; what the last step, t = 1, uses).
    """
    x_prev = schedule.oneover_sqrta[t].item() * (x - schedule.mab_over_sqrtmab[t].item() * eps)
    if noise is not None:
        if noise.shape != x.shape:  # a [1, C, H, W] z would broadcast silently to the batch
            raise ValueError(f"noise shape {tuple(noise.shape)} != x shape {tuple(x.shape)}")
        x_prev = x_prev + schedule.sqrt_beta_t[t].item() * noise
    return x_prev


def ddpm_sample(
    denoiser: GuidedDenoiser,
    x: torch.Tensor,
    c: torch.Tensor,
    *,
    T: int = DDPM_T,
    seeds: Sequence[int | torch.Generator] | None = None,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Sample digits of classes ``c`` [B] from noise ``x`` [B, C, H, W], t = T..1.

    z is drawn for every step but the last (t = 1 uses z = 0), from ``noise_fn(step_index)``
    if given, else per image from ``seeds`` (see ``seeded_noise``: results then do not
    depend on the batch layout), else from torch's global generator.
    ``callback(step_index, t, x)`` runs after every step with x = x_{t-1}; keep the
    steps listed by ``frame_timesteps`` to draw the reverse process.
    """
    if seeds is not None and noise_fn is not None:
        raise ValueError("give either seeds or noise_fn, not both")
    if c.shape != (x.shape[0],):
        raise ValueError(f"need one class label per image: c has shape {tuple(c.shape)}, x {tuple(x.shape)}")
    schedule = ddpm_schedule(T)
    x = x.to(torch.float32)
    if noise_fn is None:
        if seeds is not None:
            noise_fn = seeded_noise(seeds, x)
        else:
            noise_fn = global_noise(x)

    batch = x.shape[0]
    for i, t in enumerate(range(T, 0, -1)):
        t_batch = torch.full((batch,), t, dtype=torch.int64, device=x.device)
        eps = denoiser(x, t_batch, c).to(torch.float32)
        z = noise_fn(i).to(x.device, torch.float32) if t > 1 else None
        x = ddpm_step(x, eps, t, schedule, z)
        if callback is not None:
            callback(i, t, x)
    return x


def frame_timesteps(T: int = DDPM_T, n: int = 6) -> list[int]:
    """``n`` timesteps evenly spread over the reverse process, the final image included.

    The callback at timestep t sees x_{t-1}, so the list runs from T (almost pure
    noise) down to 1 (the finished image): for T = 1000, n = 6: [1000, 800, 600, 400, 200, 1].
    """
    # Frames at least two steps apart, so that rounding never lands two frames on t = 1.
    if not 2 <= n <= T // 2 + 1:
        raise ValueError(f"n must be between 2 and {T // 2 + 1} for T={T} (got {n})")
    return [max(1, T - round(k * T / (n - 1))) for k in range(n)]


def ddim_timesteps_for_ddpm(steps: int, T: int = DDPM_T) -> list[int]:
    """``steps`` descending timesteps spread over 1..T for sampling the T-step DDPM with DDIM:
    ``round((k+1)*T/steps)`` for k < steps, so the first is T and ``steps == T`` gives every t."""
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T} (got {steps})")
    return [round((k + 1) * T / steps) for k in reversed(range(steps))]


def ddim_sample_guided(
    denoiser: GuidedDenoiser,
    x: torch.Tensor,
    c: torch.Tensor,
    *,
    steps: int = 100,
    T: int = DDPM_T,
    eta: float = 0.0,
    seeds: Sequence[int | torch.Generator] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM over the DDPM tables of Problem 1: the fast sampler for a digit model trained with T steps.

    The same update as the face sampler (``ddim.ddim_step``: x0 clamped to [-1, 1], the step
    after the smallest timestep goes to ``abar[0]``), with the guided denoiser and the digit
    schedule. ``steps`` of T model calls; eta = 0 is deterministic.
    """
    if c.shape != (x.shape[0],):
        raise ValueError(f"need one class label per image: c has shape {tuple(c.shape)}, x {tuple(x.shape)}")
    timesteps = ddim_timesteps_for_ddpm(steps, T)
    abar = ddpm_schedule(T).abar_t.double().tolist()
    x = x.to(torch.float32)
    noise_fn = seeded_noise(seeds, x) if eta > 0 and seeds is not None else global_noise(x)
    for i, (t, t_prev) in enumerate(zip(timesteps, timesteps[1:] + [0], strict=True)):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        eps = denoiser(x, t_batch, c).to(torch.float32)
        z = noise_fn(i).to(x.device, torch.float32) if eta > 0 else None
        x = ddim_step(x, eps, abar[t], abar[t_prev], eta=eta, noise=z)
        if callback is not None:
            callback(i, t, x)
    return x
