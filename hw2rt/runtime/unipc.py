"""UniPC (bh2, data prediction, order 2): a predictor-corrector few-step solver (arXiv 2302.04867).

In the log-SNR ``lambda`` of `dpm_solver.py`, with ``h = lambda_t - lambda_s``, ``phi = expm1(-h)`` and
``B(h) = expm1(-h)`` (the "bh2" choice), both updates start from ``x_t' = (sigma_t / sigma_s) x_s -
alpha_t phi m0`` (m0: the x0 at s) and add ``-alpha_t B(h)`` times a combination of differences of x0s:

- UniP, the predictor (order 2 from the second step on): ``+ 0.5 (m1 - m0) / r1`` with m1 the x0 one
  step back and ``r1 = (lambda_1 - lambda_s) / h``; order 1 adds nothing (a DPM-Solver++ first-order step).
- UniC, the corrector: once the model has been evaluated at the predicted x_t (the evaluation the next
  predictor needs anyway: UniPC costs no extra call), redo the last step with that x0 as well:
  order 1 ``0.5 (x0_t - m0)``; order 2 ``rho_0 (m1 - m0) / r1 + rho_1 (x0_t - m0)``, the rhos solving
  ``[[1, 1], [r1, 1]] rho = b`` (`_corrector_rhos`: the paper's B(h) system for two points).

Orders follow diffusers' UniPCMultistepScheduler (solver_order 2, lower_order_final): the first step is
first order, the last step (to sigma = 0) is first order and returns its x0; the corrector of a step
has the order of the predictor that made it. Deterministic; every coefficient is a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from hw2rt.runtime.ddim import Callback, Denoiser
from hw2rt.runtime.dpm_solver import checked_timesteps, data_prediction, log_snr
from hw2rt.runtime.schedules import Schedule


def _update(x: torch.Tensor, abar_s: float, abar_t: float, h: float, m0: torch.Tensor,
            correction: torch.Tensor | None) -> torch.Tensor:
    """``(sigma_t / sigma_s) x - alpha_t expm1(-h) (m0 + correction)``: with bh2, B(h) = expm1(-h) too."""
    d = m0 if correction is None else m0 + correction
    return math.sqrt((1.0 - abar_t) / (1.0 - abar_s)) * x - (math.sqrt(abar_t) * math.expm1(-h)) * d


def _corrector_rhos(h: float, r1: float) -> tuple[float, float]:
    """The order-2 UniC weights for bh2: solve [[1, 1], [r1, 1]] rho = b, b_k = k! phi_k / B(h) with
    phi_1 = (e^hh - 1)/hh - 1, phi_2 = phi_1/hh - 1/2 (hh = -h: data prediction)."""
    hh = -h
    b_h = math.expm1(hh)
    phi = b_h / hh - 1.0
    b1 = phi / b_h
    phi = phi / hh - 0.5
    b2 = 2.0 * phi / b_h
    rho0 = (b1 - b2) / (1.0 - r1)
    return rho0, b1 - rho0


def unipc_sample(denoiser: Denoiser, x: torch.Tensor, schedule: Schedule, timesteps: Sequence[int], *,
                 clip: bool = True, callback: Callback | None = None) -> torch.Tensor:
    """UniPC-bh2 from noise ``x`` over ``timesteps`` (descending): one model call per timestep, the last
    one's x0 is the result. ``clip`` and ``callback(step_index, t, x, x0)`` as in `dpm_solver`: the callback
    gets the predictor's x (which the next step corrects once it has evaluated the model there)."""
    timesteps = checked_timesteps(timesteps)
    abar = schedule.read(schedule.abar)
    lam = {t: log_snr(abar[t]) for t in timesteps}
    x = x.to(torch.float32)
    history = []  # (t, x0) of the steps so far, newest last
    start, order = None, 0  # the last predictor's starting point and order
    for i, t in enumerate(timesteps):
        x0 = data_prediction(denoiser, x, t, abar[t], clip)
        if history:  # UniC: correct x_t with the x0 just evaluated there
            s, m0 = history[-1]
            h = lam[t] - lam[s]
            if order == 1:
                correction = 0.5 * (x0 - m0)
            else:
                s1, m1 = history[-2]
                r1 = (lam[s1] - lam[s]) / h
                rho0, rho1 = _corrector_rhos(h, r1)
                correction = (m1 - m0) * (rho0 / r1) + rho1 * (x0 - m0)
            x = _update(start, abar[s], abar[t], h, m0, correction)
        history = [*history[-1:], (t, x0)]
        order = min(2, len(timesteps) - i, len(history))
        start = x
        if i == len(timesteps) - 1:
            x = x0  # the first-order step to sigma = 0 returns x0 itself
        else:
            t_next = timesteps[i + 1]
            h = lam[t_next] - lam[t]
            correction = None
            if order == 2:
                s1, m1 = history[-2]
                correction = (m1 - x0) * (0.5 / ((lam[s1] - lam[t]) / h))
            x = _update(x, abar[t], abar[t_next], h, x0, correction)
        if callback is not None:
            callback(i, t, x, x0)
    return x
