"""Schedules, DDIM / DDPM samplers and interpolation, checked against formulas and diffusers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hw2rt.runtime.ddim import ddim_sample, ddim_step
from hw2rt.runtime.ddpm import ancestral_coefficients, ancestral_sample, ancestral_step, guided_denoiser
from hw2rt.runtime.interpolate import alphas, interpolate, lerp, slerp
from hw2rt.runtime.jobs import frame_timesteps
from hw2rt.runtime.noise import seeded_noise
from hw2rt.runtime.schedules import DIGIT, FACE, digit_schedule

diffusers = pytest.importorskip("diffusers")

ABAR64 = FACE.abar


def ddim_timesteps(steps):
    return FACE.timesteps(steps)


def face_ddim(denoiser, x, steps=50, eta=0.0, seeds=None, noise_fn=None, callback=None):
    """The face DDIM loop as the face job drives it (its schedule, its timesteps, per-image seeds)."""
    noise = noise_fn if noise_fn is not None else (seeded_noise(seeds, x) if seeds is not None else None)
    return ddim_sample(denoiser, x, FACE, FACE.timesteps(steps), eta=eta, noise=noise, callback=callback)


def ddpm_step(x, eps, t, schedule, noise=None):
    a, b, sigma = ancestral_coefficients(schedule)
    return ancestral_step(x, eps, a[t], b[t], sigma[t], noise)


def conditioned(den, c):
    """A denoiser(x, t, c) with its labels closed over: denoiser(x, t)."""
    return lambda x, t: den(x, t, c)


def ddpm_sample(den, x, c, *, T, seeds=None, noise_fn=None, callback=None):
    """The ancestral loop as the digit job drives it: T..1 over the T-step digit schedule."""
    schedule = digit_schedule(T)
    noise = noise_fn if noise_fn is not None else (seeded_noise(seeds, x) if seeds is not None else None)
    return ancestral_sample(conditioned(den, c), x, schedule, schedule.timesteps(T), noise=noise,
                            callback=callback)


def rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours.double() - theirs.double()).norm() / theirs.double().norm()).item()


def face_toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A well-behaved stand-in for the face UNet: the exact eps for Gaussian data of
    variance 0.6 plus a small nonlinear, spatially mixing term. x0 often exceeds [-1, 1]
    early on, so the clamp is exercised; the trajectory is not chaotic."""
    a = ABAR64[t].to(torch.float32).view(-1, 1, 1, 1)
    return torch.sqrt(1 - a) * (x / (0.6 * a + 1 - a) + 0.1 * torch.tanh(torch.roll(x, 1, -1)))


def diffusers_ddim():
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=2e-2,
        beta_schedule="linear",
        timestep_spacing="leading",
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=True,
        prediction_type="epsilon",
    )
    sched.set_timesteps(50)
    return sched


# ------------------------------------------------------------------------------- schedules


def test_ddim_timesteps_50():
    assert ddim_timesteps(50) == list(range(981, 0, -20))
    assert ddim_timesteps(50)[:3] == [981, 961, 941] and ddim_timesteps(50)[-1] == 1
    assert ddim_timesteps(1) == [1]
    assert ddim_timesteps(999) == list(range(999, 0, -1))


@pytest.mark.parametrize("steps", [0, -1, -50, 1000, 1001, 5000])
def test_ddim_timesteps_invalid(steps):
    with pytest.raises(ValueError, match="between 1 and 999") as err:
        ddim_timesteps(steps)
    assert str(steps) in str(err.value)


@pytest.mark.parametrize("steps", [50.0, "50", True])
def test_ddim_timesteps_rejects_non_integers(steps):
    with pytest.raises(TypeError, match="between 1 and 999"):
        ddim_timesteps(steps)


def test_ddim_timesteps_every_allowed_count_stays_in_range():
    for steps in range(1, 1000):
        ts = ddim_timesteps(steps)
        assert len(ts) == steps and max(ts) <= 999 and min(ts) == 1 and ts == sorted(ts, reverse=True)


def test_ddim_betas_float64():
    betas, abar = FACE.betas, FACE.abar
    assert betas.dtype == torch.float64 and abar.dtype == torch.float64
    assert betas.shape == (1000,) and abar.shape == (1000,)
    assert betas[0].item() == 1e-4 and betas[-1].item() == 2e-2
    assert abar[0].item() == 0.9999
    expected = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64), 0)
    assert torch.equal(abar, expected)


def test_ddpm_tables_match_closed_form():
    T = 1000
    s = digit_schedule(T)
    t = torch.arange(T + 1, dtype=torch.float64)
    beta = (0.02 - 1e-4) * t / T + 1e-4
    abar = torch.cumprod(1 - beta, 0)  # cumprod, not the module's exp(cumsum(log))
    for name, got, want in (("betas", s.betas, beta), ("alphas", s.alphas, 1 - beta), ("abar", s.abar, abar)):
        assert got.dtype == torch.float64 and got.shape == (T + 1,), name
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0, msg=name)
    # What the samplers and the trainer read: float32, derived in float64.
    a, b, sigma = ancestral_coefficients(s)
    for name, got, want in (("1/sqrt(alpha)", a, 1 / (1 - beta).sqrt()),
                            ("eps coefficient", b, beta / (1 - abar).sqrt()),
                            ("sqrt(beta)", sigma, beta.sqrt()), ("abar", s.read(s.abar), abar)):
        assert len(got) == T + 1 and all(v == float(torch.tensor(v, dtype=torch.float32)) for v in got), name
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, rtol=1e-6, atol=0, msg=name)
    x0, eps = torch.ones(2, 1, 1, 1), torch.full((2, 1, 1, 1), 2.0)
    x_t = s.add_noise(x0, eps, torch.tensor([1, 500]))
    torch.testing.assert_close(x_t.flatten().double(),
                               abar[[1, 500]].sqrt() + 2 * (1 - abar[[1, 500]]).sqrt(),
                               rtol=1e-6, atol=0)
    assert s.T == T and s.betas[1].item() == pytest.approx(1e-4 + 1.99e-5)
    assert DIGIT.T == 1000 and FACE.T == 1000 and FACE.read(FACE.abar)[0] == 0.9999


# ------------------------------------------------------------------------------- DDIM


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_matches_diffusers(eta):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    zs = [torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i)) for i in range(50)]
    seen = []
    ours = face_ddim(
        face_toy_eps, x, steps=50, eta=eta, noise_fn=lambda i: zs[i],
        callback=lambda i, t, _x, _x0: seen.append(t),
    )

    sched = diffusers_ddim()
    assert sched.timesteps.tolist() == ddim_timesteps(50) == seen
    y = x.clone()
    for i, t in enumerate(sched.timesteps):
        eps = face_toy_eps(y, torch.full((2,), int(t)))
        y = sched.step(eps, t, y, eta=eta, variance_noise=zs[i] if eta > 0 else None).prev_sample
    err = rel_err(ours, y)
    print(f"DDIM eta={eta}: relative error vs diffusers {err:.2e}")
    assert ours.dtype == torch.float32
    assert err <= 1e-5
    # The noise must actually matter, or the eta=0.5 case proves nothing.
    if eta > 0:
        assert rel_err(face_ddim(face_toy_eps, x, eta=eta, noise_fn=lambda i: -zs[i]), ours) > 1e-2


def test_ddim_last_step_goes_to_abar0_and_casts_input():
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = torch.zeros(1, 3, 8, 8)
    out = ddim_step(x.float(), eps, ABAR64[1].item(), ABAR64[0].item())
    x0 = (x / math.sqrt(ABAR64[1].item())).clamp(-1, 1)
    torch.testing.assert_close(out.double(), math.sqrt(0.9999) * x0, rtol=1e-6, atol=1e-7)
    assert face_ddim(face_toy_eps, x, steps=5).dtype == torch.float32


def test_ddim_argument_errors():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        face_ddim(face_toy_eps, x, eta=-0.1)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        face_ddim(face_toy_eps, x, eta=float("nan"))
    with pytest.raises(ValueError, match="eta must be >= 0 and finite"):
        face_ddim(face_toy_eps, x, eta=float("inf"))
    with pytest.raises(ValueError, match="one seed per image"):
        face_ddim(face_toy_eps, x, eta=0.5, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="noise shape"):
        face_ddim(face_toy_eps, x, eta=0.5, noise_fn=lambda i: torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="between 1 and 999"):
        face_ddim(face_toy_eps, x, steps=1000)
    with pytest.raises(ValueError, match="no timesteps"):
        ddim_sample(face_toy_eps, x, FACE, [])


def test_ddim_eta_batch_invariant():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    seeds = [11, 12, 13, 14]
    whole = face_ddim(face_toy_eps, x, steps=20, eta=0.5, seeds=seeds)
    singles = torch.cat(
        [face_ddim(face_toy_eps, x[i : i + 1], steps=20, eta=0.5, seeds=[s]) for i, s in enumerate(seeds)]
    )
    halves = torch.cat(
        [
            face_ddim(face_toy_eps, x[:2], steps=20, eta=0.5, seeds=seeds[:2]),
            face_ddim(face_toy_eps, x[2:], steps=20, eta=0.5, seeds=seeds[2:]),
        ]
    )
    assert (whole - singles).abs().max().item() <= 1e-6
    assert (whole - halves).abs().max().item() <= 1e-6
    # Different seeds give different images, the same seed the same image.
    other = face_ddim(face_toy_eps, x, steps=20, eta=0.5, seeds=[21, 22, 23, 24])
    assert (whole - other).abs().max().item() > 1e-2
    assert torch.equal(whole, face_ddim(face_toy_eps, x, steps=20, eta=0.5, seeds=seeds))


def test_seeded_noise_matches_diffusers_generator_list():
    like = torch.empty(3, 2, 4, 4)
    fn = seeded_noise([5, 6, 7], like)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    for step in range(2):
        want = diffusers.utils.torch_utils.randn_tensor(like.shape, generator=gens, dtype=torch.float32)
        assert torch.equal(fn(step), want)


# ------------------------------------------------------------------------------- DDPM


def diffusers_ddpm(T: int, schedule_dtype: torch.dtype):
    """diffusers' DDPMScheduler on our table: T+1 training steps, so diffusers' index k is our t
    and its alphas_cumprod[k - 1] is our abar_{t-1} (index 0 included)."""
    t = torch.arange(T + 1, dtype=torch.float64)
    betas = (0.02 - 1e-4) * t / T + 1e-4
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=T + 1, trained_betas=betas.numpy(), variance_type="fixed_large", clip_sample=False
    )
    if schedule_dtype == torch.float64:
        # diffusers keeps its schedule in fp32, where 1 - abar_t loses ~1e-4 of its value for t < 10;
        # handing it the float64 schedule compares the formulas rather than the roundings.
        sched.alphas_cumprod = torch.cumprod(1 - betas, 0)
    return sched


@pytest.mark.parametrize("schedule_dtype", [torch.float64, torch.float32])
def test_ddpm_step_matches_diffusers_and_closed_form(schedule_dtype):
    T = 1000
    ours_sched = digit_schedule(T)
    sched = diffusers_ddpm(T, schedule_dtype)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 8, 8, generator=g)
    eps = torch.randn(3, 3, 8, 8, generator=g)
    # Stock diffusers (fp32 schedule) is itself off by up to ~1e-4 at t < 10 (see diffusers_ddpm).
    ts = [1000, 999, 500, 100, 10, 2, 1] if schedule_dtype == torch.float64 else [1000, 999, 500, 100]
    worst = 0.0
    for t in ts:
        mean = ddpm_step(x, eps, t, ours_sched)
        # Closed form, independently in float64.
        beta = (0.02 - 1e-4) * t / T + 1e-4
        abar = math.prod(1 - ((0.02 - 1e-4) * k / T + 1e-4) for k in range(t + 1))
        closed = (x.double() - eps.double() * beta / math.sqrt(1 - abar)) / math.sqrt(1 - beta)
        assert rel_err(mean, closed) <= 1e-6, t

        # diffusers adds sqrt(current_beta_t)*z from the generators; draw the same z via seeded_noise.
        seeds = [40 + t, 41 + t, 42 + t]
        z = seeded_noise(seeds, x)(0)
        theirs = sched.step(
            eps, t, x, generator=[torch.Generator().manual_seed(s) for s in seeds]
        ).prev_sample
        var = 1 - sched.alphas_cumprod[t] / sched.alphas_cumprod[t - 1]
        theirs_mean = theirs - var.sqrt().to(torch.float32) * z
        for err in (rel_err(mean, theirs_mean), rel_err(ddpm_step(x, eps, t, ours_sched, z), theirs)):
            worst = max(worst, err)
            assert err <= 1e-5, (t, err)
    print(f"DDPM step ({schedule_dtype}): max relative error vs diffusers {worst:.2e}")


def digit_toy_eps(schedule):
    def denoiser(x, t, c):
        a = schedule.abar.float()[t].view(-1, 1, 1, 1)
        return torch.sqrt(1 - a) * (x / (0.5 * a + 1 - a) + 0.02 * c.view(-1, 1, 1, 1))

    return denoiser


def test_ddpm_sample_matches_diffusers_loop():
    T = 20
    den = digit_toy_eps(digit_schedule(T))
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    c = torch.tensor([0, 7])
    seen = []
    ours = ddpm_sample(den, x, c, T=T, seeds=[1, 2], callback=lambda i, t, _x, _x0: seen.append((i, t)))
    assert seen == [(i, T - i) for i in range(T)]

    sched = diffusers_ddpm(T, torch.float64)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    y = x.clone()
    for t in range(T, 1, -1):
        y = sched.step(den(y, torch.full((2,), t), c), t, y, generator=gens).prev_sample
    # Our last step (t = 1) uses z = 0; diffusers still adds noise there, so compare its mean.
    y = ddpm_step(y, den(y, torch.full((2,), 1), c), 1, digit_schedule(T))
    err = rel_err(ours, y)
    print(f"DDPM T={T} loop: relative error vs diffusers {err:.2e}")
    assert err <= 1e-5


def test_ddpm_batch_invariant():
    T = 20
    den = digit_toy_eps(digit_schedule(T))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    c = torch.tensor([0, 3, 5, 9])
    seeds = [7, 8, 9, 10]
    whole = ddpm_sample(den, x, c, T=T, seeds=seeds)
    singles = torch.cat(
        [ddpm_sample(den, x[i : i + 1], c[i : i + 1], T=T, seeds=[seeds[i]]) for i in range(4)]
    )
    assert (whole - singles).abs().max().item() <= 1e-6
    assert (whole - ddpm_sample(den, x, c, T=T, seeds=[1, 2, 3, 4])).abs().max().item() > 1e-2


def test_ddpm_last_step_is_noise_free():
    T = 5
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    calls = []

    def noise_fn(i):
        calls.append(i)
        return torch.zeros_like(x)

    ddpm_sample(lambda x, t, c: torch.zeros_like(x), x, torch.tensor([1]), T=T, noise_fn=noise_fn)
    assert calls == [0, 1, 2, 3]  # t = 5..2; none at t = 1


def test_guided_denoiser_one_doubled_call():
    T, w, B = 1000, 2.0, 3
    calls = []

    def model_fn(x, c, t_frac, mask):
        calls.append((x.clone(), c.clone(), t_frac.clone(), mask.clone()))
        # Differs between conditional and unconditional rows, depends on every input.
        return (
            x * (1 + mask.view(-1, 1, 1, 1))
            + 0.1 * c.view(-1, 1, 1, 1) * (1 - mask.view(-1, 1, 1, 1))
            + t_frac.view(-1, 1, 1, 1)
        )

    x = torch.randn(B, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    c = torch.tensor([1, 4, 9])
    den = guided_denoiser(model_fn, w, c, T=T)
    t = torch.full((B,), 700)
    eps = den(x, t)

    assert len(calls) == 1
    cx, cc, ct, cm = calls[0]
    assert torch.equal(cx, torch.cat([x, x])) and torch.equal(cc, torch.cat([c, c]))
    assert cc.dtype == torch.int64 and ct.dtype == torch.float32 and cm.dtype == torch.float32
    assert torch.equal(cm, torch.tensor([0.0] * B + [1.0] * B))
    assert torch.equal(ct, torch.full((2 * B,), 0.7, dtype=torch.float32))
    eps_c = model_fn(x, c, ct[:B], torch.zeros(B))
    eps_u = model_fn(x, c, ct[:B], torch.ones(B))
    torch.testing.assert_close(eps, (1 + w) * eps_c - w * eps_u, rtol=0, atol=1e-6)
    assert not torch.allclose(eps, eps_c)

    # Inside the sampler: exactly one model call per step.
    calls.clear()
    schedule = digit_schedule(5)
    ancestral_sample(guided_denoiser(model_fn, w, torch.tensor([0, 1]), T=5), torch.zeros(2, 3, 4, 4),
                     schedule, schedule.timesteps(5), noise=seeded_noise([0, 1], torch.zeros(2, 3, 4, 4)))
    with pytest.raises(ValueError, match="one class label per image"):
        guided_denoiser(model_fn, w, torch.tensor([0, 1, 2]), T=5)(torch.zeros(2, 3, 4, 4),
                                                                   torch.full((2,), 3))
    assert len(calls) == 5 and all(call[0].shape[0] == 4 for call in calls)


def test_frame_timesteps():
    """Six frames spread over the trajectory the digit job samples, its first and last steps included."""
    assert frame_timesteps(list(range(1000, 0, -1))) == [1000, 800, 600, 401, 201, 1]
    assert frame_timesteps(list(range(20, 0, -1))) == [20, 16, 12, 9, 5, 1]
    assert frame_timesteps(DIGIT.timesteps(50)) == [1000, 800, 600, 420, 220, 20]


def test_ancestral_sampler_needs_consecutive_timesteps():
    with pytest.raises(ValueError, match="consecutive"):
        ancestral_sample(lambda x, t: x, torch.zeros(1, 3, 4, 4), DIGIT, DIGIT.timesteps(50))


# ------------------------------------------------------------------------------- interpolation


def unit(seed: int, shape=(1, 3, 8, 8)) -> torch.Tensor:
    v = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.floats(0.0, 1.0))
def test_slerp_keeps_unit_norm(seed, alpha):
    x0, x1 = unit(seed), unit(seed + 1)
    assert abs(slerp(x0, x1, alpha).norm().item() - 1.0) <= 1e-5


def test_slerp_and_lerp_ends_exact():
    x0, x1 = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    for f in (slerp, lerp):
        assert torch.equal(f(x0, x1, 0.0), x0) and torch.equal(f(x0, x1, 1.0), x1)


def test_slerp_closed_form_and_degenerate():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(slerp(e1, e2, 0.5), torch.tensor([1.0, 1.0]) / math.sqrt(2))
    torch.testing.assert_close(
        slerp(e1, e2, 1 / 3), torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)])
    )
    # theta ~ 0: lerp fallback, no NaN.
    x = torch.randn(1, 3, 8, 8)
    out = slerp(x, 2 * x, 0.25)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, 1.25 * x)
    # lerp of two independent noises shrinks the norm; slerp does not.
    a, b = unit(1, (1, 3, 32, 32)), unit(2, (1, 3, 32, 32))
    assert lerp(a, b, 0.5).norm() < 0.8 and abs(slerp(a, b, 0.5).norm().item() - 1) < 1e-5


def test_alphas_and_interpolate():
    assert alphas() == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    x0, x1 = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    batch = interpolate(x0, x1, method="slerp")
    assert batch.shape == (11, 3, 8, 8)
    assert torch.equal(batch[0:1], x0) and torch.equal(batch[-1:], x1)
    torch.testing.assert_close(interpolate(x0, x1, method="lerp")[5:6], (x0 + x1) / 2)
    with pytest.raises(ValueError):
        interpolate(x0, x1, method="cubic")


# --- DDIM over the DDPM tables (the fast digit sampler) -------------------------------------------

def test_ddim_timesteps_for_ddpm():
    assert digit_schedule(1000).timesteps(4) == [1000, 750, 500, 250]
    assert digit_schedule(20).timesteps(20) == list(range(20, 0, -1))
    for bad in (0, 21):
        with pytest.raises(ValueError, match="between 1 and T=20"):
            digit_schedule(20).timesteps(bad)


def test_ddim_over_the_digit_schedule_matches_closed_form():
    """Each step: x0 = (x - sqrt(1-abar_t) eps)/sqrt(abar_t), clamped;
    x = sqrt(abar_prev) x0 + sqrt(1-abar_prev) eps."""
    T, steps = 50, 5
    schedule = digit_schedule(T)

    def model_fn(x, c, t_frac, mask):
        return (0.3 * x + 0.1 * t_frac[:, None, None, None]
                + 0.05 * c[:, None, None, None].float() * (1 - mask)[:, None, None, None])
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    c = torch.tensor([0, 4, 9])
    denoiser = guided_denoiser(model_fn, 2.0, c, T)
    seen = []
    out = ddim_sample(denoiser, x, schedule, schedule.timesteps(steps),
                      callback=lambda i, t, _x, _x0: seen.append(t))
    assert seen == [50, 40, 30, 20, 10]
    abar = schedule.abar.float().double()  # the digit schedule is read in float32
    ref = x.double()
    for t, t_prev in zip(seen, seen[1:] + [0]):
        eps = denoiser(ref.float(), torch.full((3,), t)).double()
        x0 = ((ref - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
        ref = abar[t_prev].sqrt() * x0 + (1 - abar[t_prev]).sqrt() * eps
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5)
    # Deterministic and independent of the batch layout at eta = 0.
    single = torch.cat([ddim_sample(guided_denoiser(model_fn, 2.0, c[i:i + 1], T), x[i:i + 1], schedule,
                                    schedule.timesteps(steps)) for i in range(3)])
    assert torch.allclose(single, out, atol=1e-6)
