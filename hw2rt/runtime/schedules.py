"""Noise schedules of both HW2 diffusion problems: the one place they are defined.

Two schedules live here, and they differ on purpose (see HW2_SPEC.md):

* The face / DDIM schedule (Problem 2): ``T = 1000`` betas indexed ``0..999``,
  kept as **float64** torch tensors. The GT faces were made with a float64
  schedule, so the sampler derives its per-step scalars in float64 and only
  then casts them to fp32.
* The digit / DDPM tables (Problem 1, the public "conditional diffusion MNIST"
  design): arrays of length ``T + 1`` indexed ``0..T`` (index 0 is never
  sampled, it only anchors ``abar``), stored as **float32** tensors because that
  is what both training and sampling multiply with. They are computed in
  float64 first so that ``1 - abar_t`` does not lose digits for small t.
"""

from __future__ import annotations

import dataclasses
import operator

import torch

# --------------------------------------------------------------------------------------------
# Problem 2: the face UNet's DDIM schedule (float64 torch tensors).
# --------------------------------------------------------------------------------------------

DDIM_T = 1000
DDIM_BETA_START = 1e-4
DDIM_BETA_END = 2e-2


def ddim_betas(T: int = DDIM_T) -> torch.Tensor:
    """``linspace(1e-4, 2e-2, T)`` as a float64 tensor of shape [T]."""
    return torch.linspace(DDIM_BETA_START, DDIM_BETA_END, T, dtype=torch.float64)


def ddim_alphas_cumprod(T: int = DDIM_T) -> torch.Tensor:
    """``cumprod(1 - betas)`` as a float64 tensor of shape [T]; ``abar[0] = 0.9999``."""
    return torch.cumprod(1.0 - ddim_betas(T), dim=0)


def ddim_max_steps(T: int = DDIM_T) -> int:
    """Largest step count whose timesteps ``i*(T//steps) + 1`` all stay inside ``0..T-1``.

    For ``T // steps >= 2`` the last timestep is at most ``T - skip + 1 <= T - 1``;
    for ``skip == 1`` the last timestep is ``steps``, which must be ``<= T - 1``;
    ``steps > T`` gives ``skip == 0`` (every timestep 1). So exactly ``1..T-1`` is valid.
    """
    return T - 1


def ddim_timesteps(steps: int, T: int = DDIM_T) -> list[int]:
    """The DDIM timesteps in sampling order (descending).

    Uniform "leading" spacing with an offset of one, as in HW2 and in diffusers'
    ``timestep_spacing="leading", steps_offset=1``: ``skip = T // steps`` and the
    timesteps are ``i*skip + 1`` for ``i < steps``. For 50 steps: ``[981, 961, ..., 1]``.
    Raises ValueError for a step count outside ``1..ddim_max_steps(T)``, TypeError for a non-integer.
    """
    allowed = (
        f"steps must be an integer between 1 and {ddim_max_steps(T)} for a {T}-step schedule "
        f"(its timesteps i*({T}//steps)+1 must be distinct and at most {T - 1})"
    )
    if isinstance(steps, bool):
        raise TypeError(f"{allowed} (got {steps!r})")
    try:
        steps = operator.index(steps)  # rejects floats such as 50.0 rather than truncating them
    except TypeError:
        raise TypeError(f"{allowed} (got {steps!r})") from None
    if not 1 <= steps <= ddim_max_steps(T):
        raise ValueError(f"{allowed} (got {steps})")
    skip = T // steps
    timesteps = [i * skip + 1 for i in range(steps)]
    assert timesteps[-1] <= T - 1 and len(set(timesteps)) == steps  # guaranteed by ddim_max_steps
    return timesteps[::-1]


# --------------------------------------------------------------------------------------------
# Problem 1: the digit DDPM tables (float32 torch tensors of length T+1, index 0..T).
# --------------------------------------------------------------------------------------------

DDPM_T = 1000
DDPM_BETA1 = 1e-4
DDPM_BETA2 = 0.02


@dataclasses.dataclass(frozen=True)
class DDPMSchedule:
    """The tables of the conditional-MNIST DDPM; every field is float32 of shape [T+1]."""

    T: int
    beta_t: torch.Tensor
    alpha_t: torch.Tensor
    abar_t: torch.Tensor
    sqrt_beta_t: torch.Tensor  # std of the ancestral noise
    oneover_sqrta: torch.Tensor  # 1 / sqrt(alpha_t)
    mab_over_sqrtmab: torch.Tensor  # (1 - alpha_t) / sqrt(1 - abar_t): the eps coefficient
    sqrtab: torch.Tensor  # sqrt(abar_t): training, x_t = sqrtab*x0 + sqrtmab*eps
    sqrtmab: torch.Tensor  # sqrt(1 - abar_t)

    def to(self, device: torch.device | str) -> DDPMSchedule:
        """The same tables on another device (training indexes them with a device tensor of t)."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)


def ddpm_schedule(T: int = DDPM_T, beta1: float = DDPM_BETA1, beta2: float = DDPM_BETA2) -> DDPMSchedule:
    """``beta_t = (beta2-beta1)*t/T + beta1`` for t = 0..T and everything derived from it."""
    if not 0.0 < beta1 < beta2 < 1.0:
        raise ValueError(f"need 0 < beta1 < beta2 < 1 (got beta1={beta1}, beta2={beta2})")
    if T < 1:
        raise ValueError(f"T must be >= 1 (got {T})")
    t = torch.arange(0, T + 1, dtype=torch.float64)
    beta_t = (beta2 - beta1) * t / T + beta1
    alpha_t = 1.0 - beta_t
    # exp(cumsum(log)) rather than cumprod: this is how the reference design writes it.
    abar_t = torch.exp(torch.cumsum(torch.log(alpha_t), dim=0))
    sqrtmab = torch.sqrt(1.0 - abar_t)
    tables = {
        "beta_t": beta_t,
        "alpha_t": alpha_t,
        "abar_t": abar_t,
        "sqrt_beta_t": torch.sqrt(beta_t),
        "oneover_sqrta": 1.0 / torch.sqrt(alpha_t),
        "mab_over_sqrtmab": (1.0 - alpha_t) / sqrtmab,
        "sqrtab": torch.sqrt(abar_t),
        "sqrtmab": sqrtmab,
    }
    return DDPMSchedule(T=T, **{k: v.to(torch.float32) for k, v in tables.items()})
