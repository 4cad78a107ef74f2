"""DPM-Solver++(2M): the few-step multistep solver in data prediction (Lu et al., arXiv 2211.01095).

The probability-flow ODE of a VP diffusion, written in the log-SNR ``lambda_t = log(alpha_t / sigma_t)``
(``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``), is solved for the data prediction
``x0 = (x - sigma_t eps) / alpha_t``. One step from s to t (``h = lambda_t - lambda_s``) is

    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) D,

with ``D = x0_s`` (first order) or, from the second step on, ``D = x0_s + (x0_s - x0_prev) / (2 r)``,
``r = (lambda_s - lambda_prev) / h`` (the 2M "midpoint" form diffusers' DPMSolverMultistepScheduler
uses by default). The last step goes to sigma = 0 (diffusers' ``final_sigmas_type="zero"``), where a
first-order step returns the last x0 exactly; so the loop ends on the final data prediction.

Like `ddim.py`: a short function over a denoiser callable ``eps = denoiser(x, t)`` (guidance lives in
the denoiser, one doubled batch per call), the schedule as data, a step callback that receives the
predicted x0. Deterministic (no noise), and no host synchronisation: every coefficient is a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch

from hw2rt.runtime.ddim import Callback, Denoiser, predicted_x0
from hw2rt.runtime.schedules import Schedule


def log_snr(abar_t: float) -> float:
    """lambda_t = log(alpha_t / sigma_t) for alpha_t^2 = abar_t, sigma_t^2 = 1 - abar_t."""
    return 0.5 * (math.log(abar_t) - math.log1p(-abar_t))


def data_prediction(denoiser: Denoiser, x: torch.Tensor, t: int, abar_t: float, clip: bool) -> torch.Tensor:
    """The network's x0 at (x, t): eps from one denoiser call, turned into the clean image (clamped to
    [-1, 1] with `clip`). Both solvers' one model evaluation per step."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
    eps = denoiser(x, t_batch).to(torch.float32)  # an fp16 engine may hand back fp16 eps
    return predicted_x0(x, eps, abar_t, clip)


def checked_timesteps(timesteps: Sequence[int]) -> list[int]:
    """The solver's timesteps as a list: non-empty and strictly descending (each step moves to less noise)."""
    timesteps = [int(t) for t in timesteps]
    if not timesteps:
        raise ValueError("no timesteps to sample")
    if any(b >= a for a, b in pairwise(timesteps)):
        raise ValueError(f"timesteps must be strictly descending (got {timesteps})")
    return timesteps


def dpmpp_2m_sample(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, timesteps: Sequence[int], *,
                    clip: bool = True, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) from noise ``x`` over ``timesteps`` (descending, e.g. ``schedule.timesteps(5)``):
    one model call per timestep, the last one's x0 is the result.

    ``clip`` clamps every x0 to [-1, 1] (diffusers' thresholding with sample_max_value 1).
    ``callback(step_index, t, x, x0)`` runs after every step with the new x and the step's x0.
    """
    timesteps = checked_timesteps(timesteps)
    abar = schedule.read(schedule.abar)
    x = x.to(torch.float32)
    previous = None  # (lambda, x0) of the step before
    for i, t in enumerate(timesteps):
        x0 = data_prediction(denoiser, x, t, abar[t], clip)
        lam = log_snr(abar[t])
        if i == len(timesteps) - 1:
            x = x0  # the step to sigma = 0 (first order, as diffusers takes it): x0 itself
        else:
            t_next = timesteps[i + 1]
            h = log_snr(abar[t_next]) - lam
            d = x0
            if previous is not None:
                r = (lam - previous[0]) / h
                d = x0 + (x0 - previous[1]) * (0.5 / r)
            x = (math.sqrt((1.0 - abar[t_next]) / (1.0 - abar[t])) * x
                 + (math.sqrt(abar[t_next]) * -math.expm1(-h)) * d)
        if callback is not None:
            callback(i, t, x, x0)
        previous = (lam, x0)
    return x
