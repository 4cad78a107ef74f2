"""The one image decoder: image files -> the uint8 RGB batch a network takes, and its one resize rule.

Every reader of images for a network uses `read_images`: the datasets of the trainers (`layout.py`),
`classify` (runtime/jobs.py) and `eval-digits` (evaluate.py). Each file is decoded by
`hw2rt.io.read_image` (RGB uint8; grayscale repeated to 3 channels), then

    THE RESIZE RULE: an image that is not size x size is resized to size x size with PIL's
    bilinear filter (`Image.BILINEAR`), the filter of the assignment's own transforms
    (torchvision's `Resize` default); aspect ratio is not kept, as `Resize((size, size))`.

and the callers report how many images were resized. The data the assignment ships is already
at the networks' sizes (28x28 digits; the stand-in faces are written at 32x32), so the rule
only touches images a user brings in other sizes.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from hw2rt.io import read_image

RESIZE_FILTER = Image.BILINEAR


def fit_size(arr: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    """uint8 [H,W,3] -> uint8 [size,size,3] by the resize rule; also whether it had to be resized."""
    if arr.shape[:2] == (size, size):
        return arr, False
    return np.asarray(Image.fromarray(arr).resize((size, size), RESIZE_FILTER)), True


def read_images(paths, size: int) -> tuple[torch.Tensor, int]:
    """Image files -> (uint8 [N,3,size,size], how many were resized). A file that cannot be
    decoded is one Hw2rtError naming it (from `read_image`)."""
    paths = list(paths)

    def one(path):
        return fit_size(read_image(path), size)

    # PNG decoding releases the GIL (zlib), so threads give a real speed-up on big splits.
    workers = min(8, os.cpu_count() or 1)
    if len(paths) < 256 or workers == 1:
        decoded = [one(p) for p in paths]
    else:
        with ThreadPoolExecutor(workers) as pool:
            decoded = list(pool.map(one, paths, chunksize=64))
    if not decoded:
        return torch.empty(0, 3, size, size, dtype=torch.uint8), 0
    images = torch.from_numpy(np.stack([arr for arr, _ in decoded])).permute(0, 3, 1, 2).contiguous()
    return images, sum(resized for _, resized in decoded)
