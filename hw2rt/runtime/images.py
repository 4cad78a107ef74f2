"""Report figures: grids and strips of uint8 images."""
import numpy as np


def make_grid(images: list[np.ndarray], ncol: int, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile [H,W,3] uint8 images row-major into one [rows*H', ncol*W', 3] image with `pad` pixels between."""
    if not images:
        raise ValueError("no images to tile")
    h, w, c = images[0].shape
    nrow = -(-len(images) // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), fill, np.uint8)
    for k, img in enumerate(images):
        r, q = divmod(k, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid
