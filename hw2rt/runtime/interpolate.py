"""Interpolation between two starting noises (HW2 Problem 2 report figure).

Gaussian noise in high dimension lives near a sphere of radius sqrt(dim); linear
interpolation cuts through the inside of that sphere (at alpha = 0.5 the norm
shrinks by ~1/sqrt(2) for independent noises), which the DDIM sampler turns into
washed-out images. Spherical interpolation stays on the sphere; the report
shows both.
"""

from __future__ import annotations

import math

import torch

# Below this sin(theta) the two tensors are (anti)parallel: slerp's weights are 0/0.
_SIN_EPS = 1e-6


def alphas(n: int = 11) -> list[float]:
    """``n`` evenly spaced weights from 0 to 1; ``alphas()`` is [0.0, 0.1, ..., 1.0]."""
    if n < 2:
        raise ValueError(f"n must be >= 2 (got {n})")
    # i/(n-1) rather than accumulating a step: 0.3 comes out as the double nearest 0.3.
    return [i / (n - 1) for i in range(n)]


def lerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1-alpha)*x0 + alpha*x1``; exactly x0 at alpha = 0 and exactly x1 at alpha = 1."""
    return (1.0 - alpha) * x0 + alpha * x1


def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float) -> torch.Tensor:
    """``sin((1-a)θ)/sin θ · x0 + sin(aθ)/sin θ · x1``, θ the angle between the flattened tensors.

    θ and the weights are computed in float64, then applied in the tensors' dtype.
    When sin θ is ~0 (parallel or opposite tensors) the formula is 0/0 and this
    falls back to ``lerp``. Exactly x0 at alpha = 0 and x1 at alpha = 1.
    """
    if x0.shape != x1.shape:
        raise ValueError(f"shapes differ: {tuple(x0.shape)} vs {tuple(x1.shape)}")
    a = x0.detach().reshape(-1).to(torch.float64)
    b = x1.detach().reshape(-1).to(torch.float64)
    cos = (a @ b / (a.norm() * b.norm())).item()
    theta = math.acos(min(1.0, max(-1.0, cos)))
    sin_theta = math.sin(theta)
    if sin_theta < _SIN_EPS or not math.isfinite(sin_theta):
        return lerp(x0, x1, alpha)
    w0 = math.sin((1.0 - alpha) * theta) / sin_theta
    w1 = math.sin(alpha * theta) / sin_theta
    return w0 * x0 + w1 * x1


def interpolate(x0: torch.Tensor, x1: torch.Tensor, n: int = 11, method: str = "slerp") -> torch.Tensor:
    """The ``n`` interpolants of ``alphas(n)`` between two [1, C, H, W] noises, as one [n, C, H, W] batch."""
    if x0.ndim != 4 or x0.shape[0] != 1:
        raise ValueError(f"expected [1, C, H, W] noises (got {tuple(x0.shape)})")
    fns = {"slerp": slerp, "lerp": lerp}
    if method not in fns:
        raise ValueError(f"method must be one of {sorted(fns)} (got {method!r})")
    return torch.cat([fns[method](x0, x1, a) for a in alphas(n)])
