"""Training data in the assignment's layout, held in memory as uint8 tensors.

Any folder laid out like `hw2_data/` works unchanged: the real data or the offline stand-ins
of `synth.py`. The datasets are small (the largest, SVHN, is 63,544 28x28 images = 150 MB
as uint8), so each split is decoded once into one uint8 tensor and batches are sliced from
it on the training device: no DataLoader workers, no per-item Python on the hot path.

Batch order is a pure function of (seed, epoch) (see `epoch_batches`), so a run resumed in
the middle of an epoch sees exactly the batches it would have seen without the interruption.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hw2rt.errors import Hw2rtError
from hw2rt.io import list_images, read_image, read_split

DIGIT_SIZE = 28
N_CLASSES = 10


def _decode_all(paths, size: int) -> torch.Tensor:
    """Images -> uint8 [N,3,size,size] (grayscale repeated to RGB; bicubic resize if needed)."""

    def one(path):
        arr = read_image(path)
        if arr.shape[:2] != (size, size):
            arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC))
        return arr

    # PNG decoding releases the GIL (zlib), so threads give a real speed-up on big splits.
    workers = min(8, os.cpu_count() or 1)
    if len(paths) < 256 or workers == 1:
        arrays = [one(p) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(one, paths, chunksize=64))
    if not arrays:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def resolve_digit_domain(path, default: str = "mnistm") -> Path:
    """A digit domain folder (`data/` + CSVs), or a `hw2_data/` root (then `digits/<default>`)."""
    path = Path(path)
    for candidate in (path, path / "digits" / default, path / default):
        if (candidate / "data").is_dir():
            return candidate.resolve()
    raise Hw2rtError(f"{path}: not a digit domain folder (no data/ with train.csv) nor a hw2_data root "
                     f"holding digits/{default}")


def resolve_faces_dir(path) -> Path:
    """A folder of face images, or a `hw2_data/` root (then `face/faces`)."""
    path = Path(path)
    for candidate in (path, path / "face" / "faces", path / "faces"):
        if candidate.is_dir() and any(p.suffix.lower() == ".png" for p in candidate.iterdir()):
            return candidate.resolve()
    raise Hw2rtError(f"{path}: no face images (*.png) in the folder, nor in face/faces below it")


class DigitsDataset(torch.utils.data.Dataset):
    """One split of a digit domain: item i = (float [3,28,28] in [0,1], int label).

    `images` (uint8 [N,3,28,28]) and `labels` (int64 [N]) hold the whole split.
    """

    def __init__(self, domain_dir, split: str = "train", size: int = DIGIT_SIZE):
        self.domain_dir = Path(domain_dir)
        self.split = split
        rows = read_split(self.domain_dir, split)
        if not rows:
            raise Hw2rtError(f"{self.domain_dir / (split + '.csv')}: the split lists no images")
        bad = [(p.name, lab) for p, lab in rows if not 0 <= lab < N_CLASSES]
        if bad:
            raise Hw2rtError(f"{self.domain_dir / (split + '.csv')}: label {bad[0][1]} of {bad[0][0]} "
                             f"is outside 0..{N_CLASSES - 1}")
        self.names = [p.name for p, _ in rows]
        self.labels = torch.tensor([lab for _, lab in rows], dtype=torch.int64)
        self.images = _decode_all([p for p, _ in rows], size)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0, int(self.labels[i])


class FacesDataset(torch.utils.data.Dataset):
    """Every image of a folder, resized to size x size RGB: item i = float [3,size,size] in [-1,1]."""

    def __init__(self, folder, size: int = 32):
        self.folder = Path(folder)
        paths = list_images(self.folder)
        self.names = [p.name for p in paths]
        self.images = _decode_all(paths, size)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 127.5 - 1.0


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


def random_shift(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each image of `x` [B,C,H,W] translated by its own random (dy, dx) in [-max_shift, max_shift]
    (reflection padding, then a crop): the usual augmentation for small digit classifiers."""
    if max_shift <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, mode="reflect")
    oy = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
    ox = torch.randint(0, 2 * max_shift + 1, (b,), device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]
