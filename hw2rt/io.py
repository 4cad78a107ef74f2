"""The assignment's file formats: noise files and folders, images (read, write PNG, list a folder), CSVs.

The `hw2_data/` layout built on them (splits, datasets) and the one resize rule live in `hw2rt.data`.

Every write goes to a temporary file in the target folder and is renamed into place, so an
interrupted or failed run never leaves a half-written output.
"""
import contextlib
import csv
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from hw2rt.errors import Hw2rtError, first_line

_UMASK = os.umask(0o022)
os.umask(_UMASK)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
CSV_HEADER = ["image_name", "label"]


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result should look like any other file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output(path, option: str, *, folder: bool = False) -> Path:
    """Refuse, before any work, an output that cannot be written: `path` (a file, or with `folder` a folder
    of outputs) must not be the other kind, and its nearest existing ancestor must be a writable folder
    (the missing ones are created when the output is written)."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise Hw2rtError(f"{option} {path}: is {kind}; {'a folder' if folder else 'a file'} is needed here")
    ancestor = path if folder and path.exists() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise Hw2rtError(f"{option} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise Hw2rtError(f"{option} {path}: {ancestor} is not writable")
    return path


def check_outputs(*outputs) -> None:
    """Every output a command writes, refused before any work when it cannot be written:
    (option, path, is_folder) triples; a None path is an option not given."""
    for option, path, folder in outputs:
        if path is not None:
            check_output(path, option, folder=folder)


def _existing_dir(path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise Hw2rtError(f"{path}: {what} folder not found")
    return path


# --- noise -------------------------------------------------------------------------------------------

def read_noise(path) -> torch.Tensor:
    """One noise file as float32 [1,3,H,W]; [3,H,W] is accepted; any float dtype is accepted."""
    path = Path(path)
    try:
        x = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for truncated/corrupt/unsafe files
        raise Hw2rtError(f"{path}: not a readable tensor file: {first_line(exc, 120)}") from None
    if not isinstance(x, torch.Tensor):
        raise Hw2rtError(f"{path}: expected a tensor, found {type(x).__name__}")
    if not x.is_floating_point():
        raise Hw2rtError(f"{path}: noise must be a float tensor, found {x.dtype}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise Hw2rtError(f"{path}: noise must have shape [1,3,H,W] or [3,H,W], found {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise Hw2rtError(f"{path}: noise contains NaN or Inf")
    return x.float()


@dataclass(frozen=True)
class NoiseDir:
    """A noise folder, read a share at a time: its `*.pt` sorted by name and the first one's shape
    [1,3,H,W], the shape every other file must have (`open_noise_dir` reads that file alone)."""

    files: tuple
    shape: tuple

    @property
    def names(self) -> list[str]:
        return [f.stem for f in self.files]

    def read(self, indices) -> torch.Tensor:
        """Files `indices` (of the sorted files) as float32 [len(indices),3,H,W], each of the first's
        shape."""
        tensors = []
        for path in [self.files[i] for i in indices]:
            x = read_noise(path)
            if x.shape != self.shape:
                raise Hw2rtError(f"{path}: shape {list(x.shape)} differs from {self.files[0].name}'s "
                                 f"{list(self.shape)}")
            tensors.append(x)
        return torch.cat(tensors) if tensors else torch.empty(0, *self.shape[1:])


def open_noise_dir(folder) -> NoiseDir:
    """A noise folder, its first file read (for the shape); the rest is read by `NoiseDir.read`."""
    folder = _existing_dir(folder, "noise")
    files = tuple(sorted(folder.glob("*.pt")))
    if not files:
        raise Hw2rtError(f"{folder}: no .pt noise files in the folder")
    return NoiseDir(files, tuple(read_noise(files[0]).shape))


# --- images ------------------------------------------------------------------------------------------

def to_uint8_minmax(x: torch.Tensor) -> np.ndarray:
    """[3,H,W] float -> [H,W,3] uint8 with one min and one max per image: floor(v*255 + 0.5)."""
    x = x.detach().float().cpu()
    lo, hi = x.min(), x.max()
    v = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return torch.floor(v * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def to_uint8_signed(x: torch.Tensor) -> np.ndarray:
    """[3,H,W] in [-1,1] -> [H,W,3] uint8 via (x+1)/2, clamped (the DDPM digits' convention)."""
    v = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    return torch.floor(v * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


def write_png(array: np.ndarray, path):
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def read_image(path) -> np.ndarray:
    """An image file as uint8 [H,W,3], at its own size; grayscale is repeated to 3 channels.
    A network's input goes through `hw2rt.data.images.read_images` (this, plus the one resize rule)."""
    path = Path(path)
    if not path.is_file():
        raise Hw2rtError(f"{path}: image not found")
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89 M pixels and refuses twice that: either is not a picture to decode here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                    # 16-bit grayscale: scaled to 8 bits (convert("RGB") would clip everything above 255)
                    wide = np.asarray(im).astype(np.float64)
                    gray = np.clip(np.floor(wide / 257.0 + 0.5), 0, 255).astype(np.uint8)
                    return np.repeat(gray[..., None], 3, axis=2)
                return np.asarray(im.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Hw2rtError(f"{path}: refused: {first_line(exc, 160)}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise Hw2rtError(f"{path}: not a readable image (corrupt or truncated?): {exc}") from None


def list_images(folder) -> list[Path]:
    folder = _existing_dir(folder, "image")
    files = sorted(p for p in folder.iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise Hw2rtError(f"{folder}: no images in the folder")
    return files


def mse_255(a: np.ndarray, b: np.ndarray) -> float:
    """The assignment's grading: both images as float on the 0..255 scale, mean over H*W*3."""
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


# --- CSVs --------------------------------------------------------------------------------------------

def read_labels_csv(path, data_dir=None) -> list[tuple[str, int]]:
    """Rows of an `image_name,label` CSV; with `data_dir`, every named file must exist there."""
    path = Path(path)
    if not path.is_file():
        raise Hw2rtError(f"{path}: CSV not found")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != CSV_HEADER:
            raise Hw2rtError(f"{path}: CSV must start with the header 'image_name,label', found {header}")
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                rows.append((row[0].strip(), int(row[1])))
            except (IndexError, ValueError):
                raise Hw2rtError(f"{path}: line {line_no}: expected 'image_name,label', "
                                 f"found {row}") from None
    if data_dir is not None:
        for name, _ in rows:
            if not (Path(data_dir) / name).is_file():
                raise Hw2rtError(f"{path}: names {name}, which is not in {data_dir}")
    return rows


def write_labels_csv(path, rows):
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CSV_HEADER)
        w.writerows((name, int(label)) for name, label in rows)
