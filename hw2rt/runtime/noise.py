"""Where the samplers' fresh noise comes from: one source per image, or torch's global generator.

A noise source is a callable ``noise(step_index) -> tensor`` shaped like the latent batch.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

NoiseFn = Callable[[int], torch.Tensor]

BLOCK_BYTES = 64 << 20  # noise drawn ahead per source: steps x images x C x H x W fp32
MAX_BLOCK_STEPS = 32
DRAW_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))  # drawing ahead on a GPU machine


def seeded_noise(seeds: Sequence[int | torch.Generator], like: torch.Tensor, *,
                 ahead: bool | None = None) -> NoiseFn:
    """Standard normal noise shaped like ``like``, drawn per image.

    Image i gets its own CPU generator (``seeds[i]`` is an int seed, or a ``torch.Generator`` to
    continue, e.g. the one that drew that image's starting noise; reusing the *seed* of the
    starting noise would repeat it as the first z). Each call draws the next [1, C, H, W] from
    every generator, in step order: the same convention as diffusers' ``randn_tensor`` with a list
    of generators. So an image's result depends on its own seed alone, not on the batch size nor
    on how a caller splits a batch; and drawing on the CPU keeps the noise identical on every device.

    The values are drawn a block of steps at a time (the generators run ahead of the calls by up to
    two blocks). ``ahead`` (default: on a CUDA device) draws the next block on worker threads into
    pinned memory while the GPU runs, and copies it without blocking: no host synchronisation per step.
    """
    if len(seeds) != like.shape[0]:
        raise ValueError(f"need one seed per image: got {len(seeds)} seeds for a batch of {like.shape[0]}")
    generators = [s if isinstance(s, torch.Generator) else torch.Generator("cpu").manual_seed(int(s))
                  for s in seeds]
    return _BlockNoise(generators, tuple(like.shape[1:]), like.device,
                       like.device.type == "cuda" if ahead is None else ahead)


class _BlockNoise:
    """`seeded_noise`'s source: every image's next `steps` draws in one block [images, steps, C, H, W]."""

    def __init__(self, generators: list, shape: tuple, device: torch.device, ahead: bool):
        self.generators, self.shape, self.device, self.ahead = generators, shape, device, ahead
        step_bytes = 4 * math.prod(shape) * max(1, len(generators))
        self.steps = max(1, min(MAX_BLOCK_STEPS, BLOCK_BYTES // step_bytes))
        self.fused = fused_draws_match(shape)
        self.block, self.k = None, 0
        self.pending = self._submit() if ahead else None

    def _new_block(self) -> torch.Tensor:
        pin = self.ahead and self.device.type == "cuda"  # pinned: copied to the GPU without blocking
        return torch.empty((len(self.generators), self.steps, *self.shape), pin_memory=pin)

    def _submit(self):
        """The next block, drawn on the worker threads: (block, futures)."""
        out = self._new_block()
        n = len(self.generators)
        parts = max(1, min(DRAW_THREADS, n))
        bounds = [(n * j // parts, n * (j + 1) // parts) for j in range(parts)]
        futures = [_pool().submit(_draw_rows, self.generators[a:b], out[a:b], self.fused) for a, b in bounds]
        return out, futures

    def _next_block(self) -> torch.Tensor:
        if not self.ahead:
            out = self._new_block()
            _draw_rows(self.generators, out, self.fused)
            return out
        out, futures = self.pending
        for f in futures:
            f.result()
        # submitted once this block is done: a generator is never drawn from by two threads at once
        self.pending = self._submit()
        return out.to(self.device, non_blocking=True)

    def __call__(self, step_index: int) -> torch.Tensor:
        if self.block is None or self.k == self.steps:
            self.block, self.k = self._next_block(), 0
        z = self.block[:, self.k].contiguous()
        self.k += 1
        return z.to(self.device)


def _draw_rows(generators: list, out: torch.Tensor, fused: bool) -> None:
    """Row i of `out` [images, steps, *shape] <- the next `steps` draws of generator i."""
    steps = out.shape[1]
    for g, row in zip(generators, out):
        if fused:
            torch.randn(row.shape, generator=g, out=row)
        else:
            for k in range(steps):
                torch.randn(row.shape[1:], generator=g, out=row[k])


@functools.cache
def fused_draws_match(shape: tuple) -> bool:
    """Whether one draw of [steps, *shape] from a generator equals `steps` draws of `shape` (values and the
    generator's state after): true of torch's CPU normal sampler when the element count is a multiple of 16
    (it fills 16 values at a time, and redraws the tail of other sizes). Checked here, not assumed."""
    n = math.prod(shape)
    if n % 16:
        return False
    one, many = torch.Generator().manual_seed(1234), torch.Generator().manual_seed(1234)
    fused = torch.empty((3, *shape))
    torch.randn(fused.shape, generator=one, out=fused)
    apart = torch.stack([torch.randn(shape, generator=many) for _ in range(3)])
    return torch.equal(fused, apart) and torch.equal(one.get_state(), many.get_state())


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=DRAW_THREADS, thread_name_prefix="hw2rt-noise")


def global_noise(like: torch.Tensor) -> NoiseFn:
    """Noise from torch's generator of ``like``'s device (drawn there: no host synchronisation);
    reproducible only for the same batch layout."""

    def noise(step_index: int) -> torch.Tensor:
        return torch.randn(like.shape, dtype=torch.float32, device=like.device)

    return noise


def draw(noise: NoiseFn, step_index: int, x: torch.Tensor) -> torch.Tensor:
    """The step's noise, checked against the latent: a [1, C, H, W] z would broadcast silently."""
    z = noise(step_index).to(x.device, torch.float32)
    if z.shape != x.shape:
        raise ValueError(f"noise shape {tuple(z.shape)} != x shape {tuple(x.shape)}")
    return z
