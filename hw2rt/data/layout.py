"""The assignment's `hw2_data/` layout (HW2_SPEC.md), read into memory as uint8 tensors.

Any folder laid out like `hw2_data/` works unchanged: the real data or the offline stand-ins of
`synth.py`. The datasets are small (the largest, SVHN, is 63,544 28x28 images = 150 MB as uint8),
so each split is decoded once (`images.read_images`, the one decoder and resize rule) into one
uint8 tensor, and trainers slice batches from it on their device: no DataLoader workers, no
per-item Python on the hot path.
"""
from __future__ import annotations

from pathlib import Path

import torch

from hw2rt.data.images import read_images
from hw2rt.errors import Hw2rtError
from hw2rt.io import list_images, read_labels_csv

DIGIT_SIZE = 28
N_CLASSES = 10


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


def read_split(domain_dir, split: str) -> list[tuple[Path, int]]:
    """`<domain>/data/` + `<domain>/<split>.csv` (HW2 layout) -> [(image path, label)]."""
    domain_dir = Path(domain_dir)
    if not domain_dir.is_dir():
        raise Hw2rtError(f"{domain_dir}: domain folder not found")
    data = domain_dir / "data"
    rows = read_labels_csv(domain_dir / f"{split}.csv", data_dir=data)
    return [(data / name, label) for name, label in rows]


class DigitsDataset(torch.utils.data.Dataset):
    """One split of a digit domain: item i = (float [3,28,28] in [0,1], int label).

    `images` (uint8 [N,3,28,28]) and `labels` (int64 [N]) hold the whole split; `resized` counts
    the images that were not 28x28 (see the resize rule of `images.py`).
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
        self.images, self.resized = read_images([p for p, _ in rows], size)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0, int(self.labels[i])


class FacesDataset(torch.utils.data.Dataset):
    """Every image of a folder as size x size RGB (the resize rule of `images.py`; `resized` counts
    the images it changed): item i = float [3,size,size] in [-1,1]."""

    def __init__(self, folder, size: int = 32):
        self.folder = Path(folder)
        paths = list_images(self.folder)
        self.names = [p.name for p in paths]
        self.images, self.resized = read_images(paths, size)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 127.5 - 1.0
