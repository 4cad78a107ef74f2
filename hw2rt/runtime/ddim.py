"""DDIM sampling for the face UNet (HW2 Problem 2).

The sampler sees only a denoiser callable ``eps = denoiser(x, t)`` with ``x`` an
fp32 tensor [B, C, H, W] and ``t`` an int64 tensor [B] of raw timesteps; it does
not know what engine sits behind it.

Randomness (eta > 0) is drawn per image, one generator per image, so an image's
result depends only on its own seed: not on the batch size nor on how a caller
splits a batch across engine calls. The same helper serves the DDPM sampler.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from hw2rt.runtime.schedules import DDIM_T, ddim_alphas_cumprod, ddim_timesteps

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[int], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]


def seeded_noise(seeds: Sequence[int | torch.Generator], like: torch.Tensor) -> NoiseFn:
    """A ``noise_fn(step_index)`` drawing standard normal noise shaped like ``like``, per image.

    Image i gets its own CPU generator (``seeds[i]`` is an int seed, or a
    ``torch.Generator`` to continue, e.g. the one that drew that image's starting
    noise; reusing the *seed* of the starting noise would repeat it as the first z).
    Each call draws the next [1, C, H, W] from every generator, in step order:
    the same convention as diffusers' ``randn_tensor`` with a list of generators.
    Drawing on the CPU keeps the noise identical on every device.
    """
    if len(seeds) != like.shape[0]:
        raise ValueError(f"need one seed per image: got {len(seeds)} seeds for a batch of {like.shape[0]}")
    generators = []
    for s in seeds:
        if isinstance(s, torch.Generator):
            generators.append(s)
        else:
            generators.append(torch.Generator("cpu").manual_seed(int(s)))
    shape = (1, *like.shape[1:])
    device = like.device

    def noise_fn(step_index: int) -> torch.Tensor:
        z = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
        return torch.cat(z).to(device)

    return noise_fn


def global_noise(like: torch.Tensor) -> NoiseFn:
    """Noise from torch's global generator: reproducible only for the same batch layout."""

    def noise_fn(step_index: int) -> torch.Tensor:
        return torch.randn(like.shape, dtype=torch.float32).to(like.device)

    return noise_fn


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    abar_t: float,
    abar_prev: float,
    *,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM update x_t -> x_prev (DDIM paper eq. 12 with x0 clamped to [-1, 1]).

    ``abar_t`` and ``abar_prev`` are Python floats (float64); every coefficient is
    derived in float64 and becomes fp32 only when it multiplies the fp32 tensors.
    """
    sqrt_abar_t = math.sqrt(abar_t)
    sqrt_1m_abar_t = math.sqrt(1.0 - abar_t)
    sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * math.sqrt(1.0 - abar_t / abar_prev)
    # The face UNet was trained on images in [-1, 1]; clamping x0 keeps early, noisy
    # predictions from throwing the trajectory out of range (the GT faces rely on it).
    x0 = ((x - sqrt_1m_abar_t * eps) / sqrt_abar_t).clamp(-1.0, 1.0)
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(1.0 - abar_prev - sigma**2) * eps
    if sigma > 0.0:
        if noise is None:
            raise ValueError("eta > 0 needs noise for this step")
        if noise.shape != x.shape:  # a [1, C, H, W] z would broadcast silently to the batch
            raise ValueError(f"noise shape {tuple(noise.shape)} != x shape {tuple(x.shape)}")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    seeds: Sequence[int | torch.Generator] | None = None,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run DDIM from noise ``x`` [B, C, H, W] to an image batch (fp32, roughly in [-1, 1]).

    Timesteps are ``ddim_timesteps(steps)`` (981, 961, ..., 1 for 50 steps); the step
    after t = 1 goes to ``abar[0] = 0.9999``, not 1, as in the GT recipe.
    For ``eta > 0`` the noise comes from ``noise_fn(step_index)`` if given (a tensor
    shaped like x), else from ``seeds`` (one per image, see ``seeded_noise``), else
    from torch's global generator (then results depend on the batch layout).
    ``callback(step_index, t, x)`` runs after every step with the new x.
    """
    if not eta >= 0.0:  # also rejects NaN
        raise ValueError(f"eta must be >= 0 (got {eta})")
    if seeds is not None and noise_fn is not None:
        raise ValueError("give either seeds or noise_fn, not both")
    timesteps = ddim_timesteps(steps, DDIM_T)
    abar = ddim_alphas_cumprod(DDIM_T).tolist()  # Python floats keep float64 until use

    x = x.to(torch.float32)  # noise files may be any float dtype; the recipe runs in fp32
    if eta > 0.0 and noise_fn is None:
        if seeds is not None:
            noise_fn = seeded_noise(seeds, x)
        else:
            noise_fn = global_noise(x)

    batch = x.shape[0]
    prev_timesteps = timesteps[1:] + [0]
    for i, (t, t_prev) in enumerate(zip(timesteps, prev_timesteps, strict=True)):
        t_batch = torch.full((batch,), t, dtype=torch.int64, device=x.device)
        # An fp16 engine may hand back fp16 eps; the update itself stays fp32.
        eps = denoiser(x, t_batch).to(torch.float32)
        z = noise_fn(i).to(x.device, torch.float32) if eta > 0.0 else None
        x = ddim_step(x, eps, abar[t], abar[t_prev], eta=eta, noise=z)
        if callback is not None:
            callback(i, t, x)
    return x
