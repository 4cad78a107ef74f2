"""Noise schedules as data: the one place both HW2 schedules are defined.

A `Schedule` holds its tables in float64, indexed by the timestep the model is trained on, and
the rule that spreads DDIM timesteps over them. The two instances differ on purpose
(HW2_SPEC.md):

* `FACE` (Problem 2, the provided face UNet): ``betas = linspace(1e-4, 2e-2, 1000)``, timesteps
  0..999, DDIM timesteps ``i*(1000//steps) + 1`` ("leading" spacing with offset 1, as diffusers
  names it). The GT faces were made with a float64 schedule, so the samplers read its scalars
  in float64 and cast them to fp32 only when they multiply tensors.
* `DIGIT` (Problem 1, the public "conditional diffusion MNIST" design): ``beta_t`` linear from
  1e-4 to 0.02 over t = 0..T (tables of length T + 1; index 0 is never sampled, it anchors
  ``abar``), ``abar = exp(cumsum(log alpha))``; timesteps 1..T, DDIM timesteps
  ``round((k+1)*T/steps)`` ("trailing": the first is T, ``steps == T`` gives every t). That
  design keeps float32 tables, so its scalars are read in float32 (computed in float64 first,
  so that ``1 - abar_t`` keeps its digits for small t).

After the smallest timestep both DDIM loops step to index 0: ``abar[0] = 0.9999``, not 1.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Schedule:
    """Tables (float64, index = the model's timestep) and the DDIM timestep rule."""

    name: str
    T: int  # training timesteps: 0..T-1 ("leading") or 1..T ("trailing")
    betas: torch.Tensor
    alphas: torch.Tensor
    abar: torch.Tensor
    spacing: str  # "leading" or "trailing", see `timesteps`
    scalar_dtype: torch.dtype  # the precision the samplers read the tables in (see the module docstring)

    @property
    def max_steps(self) -> int:
        """The most DDIM steps the rule serves: leading ``T - 1`` (``i*(T//steps)+1`` must stay
        distinct and below T), trailing ``T``."""
        return self.T - 1 if self.spacing == "leading" else self.T

    def timesteps(self, steps: int) -> list[int]:
        """The DDIM timesteps in sampling order (descending); for FACE and 50 steps ``[981, 961, ..., 1]``.

        ValueError for a step count outside ``1..max_steps``, TypeError for a non-integer.
        """
        if self.spacing == "leading":
            allowed = (f"steps must be an integer between 1 and {self.T - 1} for a {self.T}-step schedule "
                       f"(its timesteps i*({self.T}//steps)+1 must be distinct and at most {self.T - 1})")
        else:
            allowed = f"steps must be an integer between 1 and T={self.T}"
        if isinstance(steps, bool):
            raise TypeError(f"{allowed} (got {steps!r})")
        try:
            steps = operator.index(steps)  # rejects floats such as 50.0 rather than truncating them
        except TypeError:
            raise TypeError(f"{allowed} (got {steps!r})") from None
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"{allowed} (got {steps})")
        if self.spacing == "leading":
            skip = self.T // steps
            return [i * skip + 1 for i in reversed(range(steps))]
        return [round((k + 1) * self.T / steps) for k in reversed(range(steps))]

    def read(self, table: torch.Tensor) -> list[float]:
        """A table (or one derived from the float64 tables) as Python floats in `scalar_dtype`."""
        return table.to(self.scalar_dtype).tolist()

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward process for training: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, t [B] int64."""
        sqrt_abar, sqrt_one_minus = _noise_tables(self, x0.device, x0.dtype)
        return sqrt_abar[t, None, None, None] * x0 + sqrt_one_minus[t, None, None, None] * eps


@functools.lru_cache(maxsize=16)
def _noise_tables(schedule: Schedule, device: torch.device, dtype: torch.dtype):
    # Square roots in float64, then one rounding to the training dtype.
    return schedule.abar.sqrt().to(device, dtype), (1.0 - schedule.abar).sqrt().to(device, dtype)


def face_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Schedule:
    """Problem 2's table: ``betas = linspace(beta_start, beta_end, T)``, ``abar = cumprod(1 - betas)``."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    alphas = 1.0 - betas
    return Schedule("face", T, betas, alphas, torch.cumprod(alphas, dim=0), "leading", torch.float64)


def digit_schedule(T: int = 1000, beta1: float = 1e-4, beta2: float = 0.02) -> Schedule:
    """Problem 1's tables over t = 0..T: ``beta_t = (beta2 - beta1) t / T + beta1``."""
    if not 0.0 < beta1 < beta2 < 1.0:
        raise ValueError(f"need 0 < beta1 < beta2 < 1 (got beta1={beta1}, beta2={beta2})")
    if T < 1:
        raise ValueError(f"T must be >= 1 (got {T})")
    betas = (beta2 - beta1) * torch.arange(0, T + 1, dtype=torch.float64) / T + beta1
    alphas = 1.0 - betas
    # exp(cumsum(log)) rather than cumprod: this is how the reference design writes it.
    abar = torch.exp(torch.cumsum(torch.log(alphas), dim=0))
    return Schedule("digit", T, betas, alphas, abar, "trailing", torch.float32)


FACE = face_schedule()
DIGIT = digit_schedule()
