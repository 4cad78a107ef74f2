"""Batches for the trainers: uint8 splits (hw2rt.data.layout) sliced on the training device.

Batch order is a pure function of (seed, epoch) (see `epoch_batches`), so a run resumed in
the middle of an epoch sees exactly the batches it would have seen without the interruption.
"""
from __future__ import annotations

import torch

from hw2rt.errors import Hw2rtError


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float in [0,1]."""
    return images_u8.float().div_(255.0)


def to_signed(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float in [-1,1] (the diffusion models' image range)."""
    return images_u8.float().div_(127.5).sub_(1.0)


def effective_batch(n: int, batch_size: int) -> int:
    """The batch size actually used: never more than the data (batches are full: BatchNorm needs > 1)."""
    if n < 2:
        raise Hw2rtError(f"training needs at least 2 images, found {n}")
    return max(2, min(batch_size, n))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // effective_batch(n, batch_size)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """Index batches of one epoch, [steps_per_epoch, batch] int64: a shuffle keyed by (seed, epoch).

    The last partial batch is dropped so every step sees the same batch size.
    """
    b = effective_batch(n, batch_size)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    perm = torch.randperm(n, generator=g)
    k = n // b
    return perm[: k * b].view(k, b)


class EpochShuffle:
    """step -> the index batch of that global step: `epoch_batches` of epoch step // steps_per_epoch,
    made once per epoch. A domain with fewer batches than `steps_per_epoch` cycles through its own."""

    def __init__(self, n: int, batch_size: int, seed: int, steps_per_epoch: int, device=None):
        self.n, self.batch_size, self.seed, self.steps_per_epoch = n, batch_size, seed, steps_per_epoch
        self.device = device
        self._epoch, self._batches = None, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._batches = epoch_batches(self.n, self.batch_size, self.seed, epoch).to(self.device)
        return self._batches[i % len(self._batches)]


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of `x` [B,C,H,W] translated by its own random (dy, dx) in [-max_shift, max_shift]
    (reflection padding, then a crop): the usual augmentation for small digit classifiers."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="reflect")
    oy = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device, generator=generator)
    ox = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device, generator=generator)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]
