"""Where the samplers' fresh noise comes from: one source per image, or torch's global generator.

A noise source is a callable ``noise(step_index) -> tensor`` shaped like the latent batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NoiseFn = Callable[[int], torch.Tensor]


def seeded_noise(seeds: Sequence[int | torch.Generator], like: torch.Tensor) -> NoiseFn:
    """Standard normal noise shaped like ``like``, drawn per image.

    Image i gets its own CPU generator (``seeds[i]`` is an int seed, or a ``torch.Generator`` to
    continue, e.g. the one that drew that image's starting noise; reusing the *seed* of the
    starting noise would repeat it as the first z). Each call draws the next [1, C, H, W] from
    every generator, in step order: the same convention as diffusers' ``randn_tensor`` with a list
    of generators. So an image's result depends on its own seed alone, not on the batch size nor
    on how a caller splits a batch; and drawing on the CPU keeps the noise identical on every device.
    """
    if len(seeds) != like.shape[0]:
        raise ValueError(f"need one seed per image: got {len(seeds)} seeds for a batch of {like.shape[0]}")
    generators = [s if isinstance(s, torch.Generator) else torch.Generator("cpu").manual_seed(int(s))
                  for s in seeds]
    shape = (1, *like.shape[1:])
    device = like.device

    def noise(step_index: int) -> torch.Tensor:
        return torch.cat([torch.randn(shape, generator=g, dtype=torch.float32)
                          for g in generators]).to(device)

    return noise


def global_noise(like: torch.Tensor) -> NoiseFn:
    """Noise from torch's global generator: reproducible only for the same batch layout."""

    def noise(step_index: int) -> torch.Tensor:
        return torch.randn(like.shape, dtype=torch.float32).to(like.device)

    return noise


def draw(noise: NoiseFn, step_index: int, x: torch.Tensor) -> torch.Tensor:
    """The step's noise, checked against the latent: a [1, C, H, W] z would broadcast silently."""
    z = noise(step_index).to(x.device, torch.float32)
    if z.shape != x.shape:
        raise ValueError(f"noise shape {tuple(z.shape)} != x shape {tuple(x.shape)}")
    return z
