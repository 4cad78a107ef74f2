"""The few-step solvers (DPM-Solver++(2M), UniPC-bh2) against diffusers' schedulers, and their contracts."""

from __future__ import annotations

import pytest
import torch

from hw2rt.bench.loops import diffusers_solver, diffusers_solver_loop
from hw2rt.engines import TorchEngine
from hw2rt.errors import Hw2rtError
from hw2rt.io import mse_255, to_uint8_signed
from hw2rt.runtime import jobs
from hw2rt.runtime.ddim import ddim_sample
from hw2rt.runtime.ddpm import guided_denoiser
from hw2rt.runtime.dpm_solver import dpmpp_2m_sample
from hw2rt.runtime.schedules import DIGIT
from hw2rt.runtime.unipc import unipc_sample
from hw2rt.verify.parity import random_model

diffusers = pytest.importorskip("diffusers")

SOLVERS = {"dpmpp-2m": dpmpp_2m_sample, "unipc": unipc_sample}


def diffusers_loop(name, denoiser, x, timesteps, clip):
    """diffusers' scheduler on the digit table at our timesteps (the bench's baseline, `bench.loops`)."""
    plan = jobs.DigitPlan(name, DIGIT, timesteps, clip=clip)
    assert diffusers_solver(name, plan).timesteps.tolist() == timesteps
    return diffusers_solver_loop(denoiser, x, name, plan)


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Gaussian data's exact eps plus a nonlinear, spatially mixing term: x0 leaves [-1, 1] often, so the
    clipping is exercised, and the x0 predictions change from step to step, so the multistep terms matter."""
    a = DIGIT.abar.float()[t].view(-1, 1, 1, 1)
    return torch.sqrt(1 - a) * (x / (0.5 * a + 1 - a) + 0.3 * torch.tanh(torch.roll(x, 1, -1)))


def rel_err(ours, theirs) -> float:
    return ((ours.double() - theirs.double()).norm() / theirs.double().norm()).item()


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("clip", [False, True])
def test_solver_matches_diffusers(name, clip):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for steps in (1, 2, 3, 5, 10, 20):
        timesteps = DIGIT.timesteps(steps)
        ours = SOLVERS[name](toy_eps, x, DIGIT, timesteps, clip=clip)
        err = rel_err(ours, diffusers_loop(name, toy_eps, x, timesteps, clip))
        assert ours.dtype == torch.float32
        assert err <= 1e-5, (steps, err)
    # The clip must matter here, or the clip=True case proves nothing.
    timesteps = DIGIT.timesteps(5)
    assert rel_err(SOLVERS[name](toy_eps, x, DIGIT, timesteps, clip=not clip),
                   SOLVERS[name](toy_eps, x, DIGIT, timesteps, clip=clip)) > 1e-2


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_with_a_digit_unet_and_guidance_gives_diffusers_images(name):
    """The same damped random digit UNet behind one doubled guidance batch, driven by our loop and by
    diffusers' scheduler: the same images as the digit job saves them (0-255 scale)."""
    engine = TorchEngine(random_model("digit_unet", {"n_feat": 16}, damp=0.3), "digit_unet")
    labels = torch.tensor([0, 3, 7, 9])
    x = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    calls = []

    def model_fn(*args):
        calls.append(args[0].shape[0])
        return engine(*args)

    denoiser = guided_denoiser(model_fn, 2.0, labels, DIGIT.T)
    for steps in (5, 10):
        timesteps = DIGIT.timesteps(steps)
        calls.clear()
        ours = SOLVERS[name](denoiser, x, DIGIT, timesteps, clip=True)
        assert calls == [8] * steps  # one doubled call per step, no extra call for UniPC's corrector
        theirs = diffusers_loop(name, denoiser, x, timesteps, clip=True)
        mse = sum(mse_255(to_uint8_signed(a), to_uint8_signed(b)) for a, b in zip(ours, theirs)) / len(x)
        assert rel_err(ours, theirs) <= 1e-5 and mse <= 0.01, (steps, mse)


def test_unipc_corrects_what_dpm_solver_predicts():
    """From three steps on UniPC's corrector changes the trajectory; at two steps both solvers take the
    same first-order steps (the corrector only moves a latent whose x0 the last step returns anyway)."""
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for steps, differ in ((2, False), (5, True)):
        a, b = (f(toy_eps, x, DIGIT, DIGIT.timesteps(steps)) for f in SOLVERS.values())
        assert (rel_err(a, b) > 1e-3) == differ


@pytest.mark.parametrize("name", SOLVERS)
def test_solver_callback_batch_invariance_and_last_step(name):
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    seen = []
    out = SOLVERS[name](toy_eps, x, DIGIT, DIGIT.timesteps(4),
                        callback=lambda i, t, x_i, x0: seen.append((i, t, x_i.clone(), x0.clone())))
    assert [(i, t) for i, t, *_ in seen] == list(enumerate(DIGIT.timesteps(4)))
    assert torch.equal(seen[-1][2], out) and torch.equal(seen[-1][3], out)  # ends on the last x0
    assert out.abs().max() <= 1.0  # clipped x0
    singles = torch.cat([SOLVERS[name](toy_eps, x[i:i + 1], DIGIT, DIGIT.timesteps(4)) for i in range(3)])
    assert torch.allclose(singles, out, atol=1e-6)


@pytest.mark.parametrize("loop", ["dpmpp-2m", "unipc", "ddim"])
def test_loops_never_read_a_value_back_to_the_host(loop):
    """No host synchronisation per step: on the meta device every tensor is shape-only, so reading a value
    (.item(), .tolist(), a Python `if` on a tensor) would raise."""
    x = torch.empty(2, 3, 8, 8, device="meta")
    denoiser = guided_denoiser(lambda x, c, t, m: x * t.view(-1, 1, 1, 1), 2.0,
                               torch.zeros(2, dtype=torch.int64, device="meta"), DIGIT.T)
    sample = SOLVERS.get(loop, ddim_sample)
    out = sample(denoiser, x, DIGIT, DIGIT.timesteps(5))
    assert out.device.type == "meta" and out.shape == x.shape


def test_solver_timesteps_are_checked():
    x = torch.zeros(1, 3, 4, 4)
    for f in SOLVERS.values():
        with pytest.raises(ValueError, match="no timesteps"):
            f(toy_eps, x, DIGIT, [])
        with pytest.raises(ValueError, match="strictly descending"):
            f(toy_eps, x, DIGIT, [500, 500, 100])


def test_digit_plan_for_the_solvers():
    plan = jobs.digit_plan("dpmpp-2m", 5)
    assert plan.timesteps == [1000, 800, 600, 400, 200] and plan.clip == jobs.DEFAULT_CLIP["dpmpp-2m"]
    assert jobs.digit_plan("unipc", 8, clip=False).clip is False
    assert jobs.digit_plan("ddim", 50).clip is True  # DDIM keeps the clamp it always had
    with pytest.raises(Hw2rtError, match="--eta applies to --sampler ddim"):
        jobs.digit_plan("unipc", 5, eta=1.0)
    with pytest.raises(Hw2rtError, match="--x0-clip applies to"):
        jobs.digit_plan("ancestral", 1000, clip=True)
    with pytest.raises(Hw2rtError, match="--steps 1001"):
        jobs.digit_plan("dpmpp-2m", 1001)
    with pytest.raises(Hw2rtError, match="unknown sampler"):
        jobs.digit_plan("euler", 5)


def test_stochastic_ddim_matches_diffusers_with_the_jobs_noise():
    """The few-step setting's loop (DDIM, eta 1, x0 clipped) against diffusers' DDIMScheduler fed the same
    per-image z (the bench's baseline, `bench.loops.diffusers_ddim`), where its fixed step fits the timesteps;
    and the bench says why not where it does not (3 steps of 1,000)."""
    from hw2rt.bench.loops import ddim_spacing_differs, diffusers_ddim
    from hw2rt.runtime.noise import seeded_noise

    plan = jobs.digit_plan("ddim", 4, eta=1.0)
    x, gens = jobs.digit_noise(3, seed=5)
    _, gens_again = jobs.digit_noise(3, seed=5)
    ours = ddim_sample(toy_eps, x, DIGIT, plan.timesteps, eta=1.0, noise=seeded_noise(gens, x))
    theirs = diffusers_ddim(toy_eps, x, 4, plan.timesteps, train_steps=DIGIT.T + 1, eta=1.0,
                            noise=seeded_noise(gens_again, x))
    assert ddim_spacing_differs(plan) is None and rel_err(ours, theirs) <= 1e-5
    assert rel_err(ddim_sample(toy_eps, x, DIGIT, plan.timesteps), ours) > 1e-2  # the noise mattered
    assert "333" in ddim_spacing_differs(jobs.digit_plan("ddim", 3, eta=1.0))
