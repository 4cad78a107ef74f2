"""The end-to-end scenarios: the jobs' own loops (faces through the face job's DDIM loop, digits through
the digit job's loop), called as the jobs call them (`sample_faces` / `sample_digits` with the jobs' own
batching, never a batch of the bench's), against diffusers' DDIMScheduler where diffusers is installed.

A loop is warmed up at the timed shape (a few steps: cuDNN autotuning, CUDA-graph capture) before it
is timed; a runner that fails gets its row with the reason and the others are still measured. Each
row says where a step's time went: the engine call at the loop's shape, the fresh noise, and the rest
(the sampler's arithmetic, Python and launch overhead), and what fraction of the measured peak it reached.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from functools import partial

import torch

from hw2rt.bench.measure import alternate, failure, flops_per_item, summarize, sync, timed
from hw2rt.bench.runners import DIFFUSERS, REFERENCE, RUNNERS, compute_precision, graded_precision, is_cuda
from hw2rt.io import mse_255, to_uint8_minmax, to_uint8_signed
from hw2rt.models import get_spec
from hw2rt.runtime.ddpm import guided_denoiser
from hw2rt.runtime.jobs import digit_noise, digit_plan, sample_digits, sample_faces
from hw2rt.runtime.noise import seeded_noise
from hw2rt.verify.parity import BUDGETS

# Every row has every key (None where not measured): the JSON's shape does not depend on what ran.
SCENARIO_FIELDS = ("median_s", "p10_s", "p90_s", "n", "per_step_ms", "images_per_s", "speedup_vs_torch",
                   "parity_metric", "parity_value", "parity_budget", "parity_passed", "extrapolated",
                   "compute_precision", "gflop", "achieved_gflops", "peak_gflops", "peak_fraction",
                   "step_engine_ms", "step_noise_ms", "step_other_ms", "skipped")


def scenario_row(**ids) -> dict:
    return {**dict.fromkeys(SCENARIO_FIELDS), **ids}


@dataclass
class Loop:
    """An end-to-end scenario: `images` through the job's loop for `steps` (DDIM steps, or T)."""

    images: int
    steps: int
    sampler: str = "ddim"  # digits: the digit job's sampler
    eta: float = 0.0  # digits, ddim: its eta
    repeats: int = 3
    cap_s: float | None = None  # a timed run stops here and is extrapolated
    # runner -> steps after which it stops (a slow GPU reference)
    max_steps: dict = field(default_factory=dict)
    parity_images: int | None = None  # the first images run in full for parity when a run stopped early
    warm_steps: int = 2  # engine steps run at the timed shape before timing
    scenario: str | None = None  # its rows' name (default: digit_<sampler>_loop)


class StopEarly(Exception):
    """Raised by a loop's step callback at its time cap or step limit."""


@dataclass
class Partial:
    """A run stopped early: `done` of `steps` engine steps ran (its time is extrapolated linearly);
    `chunk`: the images per engine call the job's batching gave."""

    done: int
    steps: int
    chunk: int


@dataclass
class LoopFns:
    """One loop's callables per runner: `timed` (the job, maybe capped), `parity` (the first images in
    full), `warm` (a few steps at the timed shape), and `skipped` rows (runner -> why it cannot run)."""

    timed: dict
    parity: dict
    warm: dict
    skipped: dict = field(default_factory=dict)
    per_image_rows: int = 1  # engine rows per image (guidance doubles the digits')
    noise: object = None  # chunk -> a callable drawing one step's fresh noise for it (None: no noise)


def diffusers_missing() -> str | None:
    """Why the diffusers baseline cannot run here (None: it can). Imported here, never in a timed run."""
    try:
        from diffusers import DDIMScheduler  # noqa: F401
    except ImportError as exc:  # the GPU machine has no diffusers
        return f"diffusers is not importable here ({type(exc).__name__}: {exc}): no external baseline"
    return None


def diffusers_ddim(eps_fn, x: torch.Tensor, steps: int, timesteps: list | None = None,
                   train_steps: int = 1000, eta: float = 0.0, noise=None) -> torch.Tensor:
    """The external baseline: diffusers' DDIMScheduler, configured as HW2_SPEC.md says.

    Faces: its own "leading" timesteps, eta 0. Digits: `train_steps` = T + 1 betas (the digit table's
    length), the digit job's `timesteps` in place of its own, and with `eta` > 0 the job's own z
    (`noise(step)`) as its variance noise; diffusers steps back a fixed `train_steps // steps`, so it runs
    the digit job's trajectory exactly when the timesteps are spaced by that (`ddim_spacing_differs`).
    """
    from diffusers import DDIMScheduler  # imported by diffusers_missing() already: not timed here

    sched = DDIMScheduler(num_train_timesteps=train_steps, beta_start=1e-4, beta_end=0.02,
                          beta_schedule="linear", timestep_spacing="leading", steps_offset=1,
                          set_alpha_to_one=False, clip_sample=True)
    sched.set_timesteps(steps)
    for i, t in enumerate(sched.timesteps if timesteps is None else torch.tensor(timesteps)):
        eps = eps_fn(x, t.expand(x.shape[0]).to(x.device))
        z = noise(i).to(x.device) if eta > 0 else None
        x = sched.step(eps, t, x, eta=eta, variance_noise=z).prev_sample
    return x


def ddim_spacing_differs(plan) -> str | None:
    """Why diffusers' DDIM cannot follow the digit plan's timesteps (None: it can)."""
    step = (plan.schedule.T + 1) // len(plan.timesteps)
    gaps = {a - b for a, b in zip(plan.timesteps, [*plan.timesteps[1:], 0])}
    if gaps == {step}:
        return None
    return (f"diffusers' DDIMScheduler steps back a fixed {step}; the job's {len(plan.timesteps)} timesteps "
            f"are {sorted(gaps)} apart: no baseline of the same trajectory")


def diffusers_solver(sampler: str, plan) -> object:
    """The external baseline of a few-step solver: diffusers' DPMSolverMultistepScheduler (dpmsolver++,
    order 2, midpoint) or UniPCMultistepScheduler (bh2, data prediction), on the digit table (T + 1 betas:
    its index k is the digit schedule's t), at the plan's timesteps, x0 clipping as its thresholding with
    sample_max_value 1, the last step to sigma 0. The tests hold hw2rt's loops to it."""
    import diffusers  # imported by diffusers_missing() already: not timed here

    schedule, timesteps = plan.schedule, list(plan.timesteps)
    kw = {"num_train_timesteps": schedule.T + 1, "trained_betas": schedule.betas.numpy(), "solver_order": 2,
          "lower_order_final": True, "final_sigmas_type": "zero", "prediction_type": "epsilon",
          "thresholding": plan.clip, "sample_max_value": 1.0}
    if sampler == "dpmpp-2m":
        sched = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint",
                                                      **kw)
        sched.set_timesteps(timesteps=timesteps)
        return sched
    sched = diffusers.UniPCMultistepScheduler(predict_x0=True, solver_type="bh2", **kw)
    sched.set_timesteps(len(timesteps))  # its own spacing; then the plan's timesteps and their sigmas
    abar = sched.alphas_cumprod[timesteps]
    sched.timesteps = torch.tensor(timesteps)
    sched.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1)]).float()
    return sched


def diffusers_solver_loop(eps_fn, x: torch.Tensor, sampler: str, plan) -> torch.Tensor:
    """`diffusers_solver`'s loop over `eps_fn(x, t)` from noise `x`."""
    sched = diffusers_solver(sampler, plan)
    for t in sched.timesteps:
        x = sched.step(eps_fn(x, t.expand(x.shape[0]).to(x.device)), t, x).prev_sample
    return x


def _capped(sample, images: int, steps: int, device, cap_s=None, max_steps=None, warm=False):
    """`sample(callback)`, stopped at `cap_s` seconds or `max_steps` engine steps (then a `Partial`).
    The job splits its images into chunks of its own: every chunk runs `steps` steps. `warm`: stop at
    `max_steps` even when that is the last step (a warm-up's result is its Partial: the chunk size)."""
    start, done, total, chunk = time.perf_counter(), [0], [0], [0]
    check_every = 20 if is_cuda(device) else 1  # a sync per check: rarely on a GPU

    def callback(_first, _i, _t, x, _x0):
        if not total[0]:
            chunk[0] = x.shape[0]
            total[0] = steps * math.ceil(images / chunk[0])
        done[0] += 1
        if warm and done[0] >= max_steps:
            raise StopEarly
        if done[0] >= total[0]:
            return
        if max_steps is not None and done[0] >= max_steps:
            raise StopEarly
        if cap_s is not None and done[0] % check_every == 0:
            sync(device)
            if time.perf_counter() - start > cap_s:
                raise StopEarly

    try:
        return sample(callback)
    except StopEarly:
        return Partial(done[0], total[0], chunk[0])


def _on_device(net, device):
    """The plain module for the diffusers baseline on `device` (the suite keeps its CPU copy for export)."""
    return net if str(device) == "cpu" else copy.deepcopy(net).to(device)


def digit_loop_fns(engines: dict, net, loop: Loop, device, w: float = 2.0) -> LoopFns:
    """The digit job's loop per runner (`sample_digits` with `loop.sampler` and the job's batching: one
    doubled guidance batch per step), and diffusers' DDIM on the plain module for the DDIM sampler. A
    timed run stops at `loop.cap_s` seconds or at `loop.max_steps[runner]` steps and returns a `Partial`."""
    plan = digit_plan(loop.sampler, loop.steps, eta=loop.eta, w=w)
    labels = torch.arange(loop.images) % 10
    steps = len(plan.timesteps)

    def run(engine, n, cap_s=None, max_steps=None, warm=False):
        return _capped(lambda cb: sample_digits(engine, labels[:n], plan, callback=cb, progress=False),
                       n, steps, device, cap_s, max_steps, warm)

    def noise(chunk):
        _, gens = digit_noise(chunk)
        return seeded_noise(gens, torch.empty(chunk, 3, 28, 28, device=device))

    fns = LoopFns(
        timed={n: partial(run, e, loop.images, loop.cap_s, loop.max_steps.get(n))
               for n, e in engines.items()},
        parity={n: partial(run, e, loop.parity_images or loop.images) for n, e in engines.items()},
        warm={n: partial(run, e, loop.images, None, loop.warm_steps, True) for n, e in engines.items()},
        per_image_rows=2, noise=noise if plan.draws_noise else None)
    if loop.sampler == "ancestral":
        return fns  # diffusers has no ancestral baseline: no row
    missing = diffusers_missing() or (ddim_spacing_differs(plan) if loop.sampler == "ddim" else None)
    if missing:
        fns.skipped[DIFFUSERS] = missing
        return fns
    module = _on_device(net, device)

    def plain(xt, ct, tt, mask):
        with torch.inference_mode():
            return module(xt, ct, tt, mask)

    guided_plain = guided_denoiser(plain, w, labels.to(device), plan.schedule.T)

    def baseline():
        x, gens = digit_noise(loop.images)  # the job's starting noise and, for eta > 0, its every z
        x = x.to(device)
        if loop.sampler != "ddim":
            return diffusers_solver_loop(guided_plain, x, loop.sampler, plan)
        return diffusers_ddim(guided_plain, x, loop.steps, plan.timesteps, train_steps=plan.schedule.T + 1,
                              eta=plan.eta, noise=seeded_noise(gens, x))

    fns.timed[DIFFUSERS] = baseline
    fns.parity[DIFFUSERS] = lambda: fns.timed[DIFFUSERS]()[:loop.parity_images or loop.images]
    return fns


def face_loop_fns(engines: dict, net, loop: Loop, dims: dict, device) -> LoopFns:
    """The face job's DDIM loop (eta 0, the job's batching) per runner, and diffusers' where installed;
    parity runs on the same images."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(loop.images, 3, dims["height"], dims["width"], generator=g).to(device)

    def run(engine, max_steps=None, warm=False):
        return _capped(lambda cb: sample_faces(engine, x, steps=loop.steps, callback=cb, progress=False),
                       loop.images, loop.steps, device, None, max_steps, warm)

    full = {n: partial(run, e) for n, e in engines.items()}
    fns = LoopFns(timed=full, parity=full,
                  warm={n: partial(run, e, loop.warm_steps, True) for n, e in engines.items()})
    missing = diffusers_missing()
    if missing:
        fns.skipped[DIFFUSERS] = missing
        return fns
    module = _on_device(net, device)

    def plain(xt, t):
        with torch.inference_mode():
            return module(xt, t)

    fns.timed[DIFFUSERS] = fns.parity[DIFFUSERS] = lambda: diffusers_ddim(plain, x, loop.steps)
    return fns


def loop_scenario(scenario: str, case, engines: dict, fns: LoopFns, per_call: list, *, loop: Loop, suite,
                  device, peaks: dict, log) -> list:
    """Time whole loops, alternating runners, after a warm-up at the timed shape; image MSE (0..255)
    against torch eager, from the timed runs, or from the parity runs where a timed run stopped early
    (then its time is extrapolated); per step, where the time went."""
    model = case.model
    to_uint8 = to_uint8_minmax if model == "face_unet" else to_uint8_signed
    failed, chunks = {}, {}
    for name, warm in fns.warm.items():  # cuDNN autotuning and graph capture, outside the timing
        if name not in suite.loop_skip:
            try:
                chunks[name] = warm().chunk
            except Exception as exc:  # noqa: BLE001 -- one runner's failure is its row's reason
                failed[name] = failure(exc)
    chunk = chunks.get(REFERENCE) or next(iter(chunks.values()), loop.images)
    batch = chunk * fns.per_image_rows  # rows per engine call, as the job batches
    calls = {r["backend"]: r for r in per_call if r["model"] == model and r["batch"] == batch}
    rows, active = {}, {}
    for name in [*fns.timed, *fns.skipped]:
        base = name == DIFFUSERS
        precision = "fp32" if base else graded_precision(name, device)
        row = scenario_row(scenario=scenario, model=model, config=case.config, dims=case.dims, batch=batch,
                           images=loop.images, steps=loop.steps, backend=name,
                           label=engine_label(name, engines.get(name)), precision=precision,
                           compute_precision="fp32" if base else compute_precision(name, device),
                           parity_metric="image_mse_255",
                           parity_budget=BUDGETS[precision]["e2e_image_mse_255"],
                           skipped=(fns.skipped.get(name) or failed.get(name)
                                    or loop_skip(name, calls.get(name), suite)))
        if row["skipped"] is None:
            active[name] = fns.timed[name]
        rows[name] = row
    times, outs = alternate(active, dict.fromkeys(active, loop.repeats), device, failed)
    complete = {n: o for n, o in outs.items() if not isinstance(o, Partial)}
    if REFERENCE not in complete or len(complete) < len(outs):  # images for parity from full runs
        complete = {}
        for name in outs:
            try:
                complete[name] = fns.parity[name]()
            except Exception as exc:  # noqa: BLE001
                failed[name] = failure(exc)
    ref = [to_uint8(img) for img in complete[REFERENCE].cpu()] if REFERENCE in complete else None
    for name, row in rows.items():
        if name in failed:
            row["skipped"] = row["skipped"] or failed[name]
        if row["skipped"] or name not in outs:
            continue
        row.update(summarize(times[name], "s"))
        if isinstance(outs[name], Partial):
            scale = outs[name].steps / max(outs[name].done, 1)
            row.update(median_s=row["median_s"] * scale, p10_s=row["p10_s"] * scale,
                       p90_s=row["p90_s"] * scale,
                       extrapolated=f"ran {outs[name].done} of {outs[name].steps} steps; "
                                    "time scaled linearly")
        row.update(per_step_ms=1e3 * row["median_s"] / loop.steps, images_per_s=loop.images / row["median_s"])
        _cost(row, case, fns.per_image_rows, peaks)
        if name != DIFFUSERS:
            _breakdown(row, engines[name], fns, case, chunk, device)
        if ref is not None and name in complete:
            mses = [mse_255(a, to_uint8(b)) for a, b in zip(ref, complete[name].cpu())]
            row["parity_value"] = sum(mses) / len(mses)
            row["parity_passed"] = row["parity_value"] <= row["parity_budget"]
    for row in rows.values():
        if row["median_s"] is not None and rows[REFERENCE]["median_s"] is not None:
            row["speedup_vs_torch"] = rows[REFERENCE]["median_s"] / row["median_s"]
        log(loop_line(row))
    return list(rows.values())


def engine_label(name: str, engine) -> str:
    """A row's label: the runner's, and for `auto` what it opened here (the engine's name)."""
    if name == DIFFUSERS:
        return "diffusers' scheduler of the same sampler (DDIM, DPM-Solver++, UniPC), torch eager fp32"
    label = RUNNERS[name]["label"]
    if RUNNERS[name]["backend"] == "auto" and engine is not None and not isinstance(engine, str):
        d = engine.describe()
        graphs = ("CUDA graphs" if engine.device.type == "cuda" else "buckets") if d["graphs"] else None
        opened = [d["backend"], d["precision"], d.get("memory_format"), graphs]
        label += f" (opened {', '.join(x for x in opened if x)})"
    return label


def _cost(row: dict, case, per_image_rows: int, peaks: dict):
    """The loop's FLOPs (images x steps x rows per image x one image's), its FLOP/s and their
    fraction of the measured peak of the row's precision (filled in again once the end peak is known)."""
    gflop = flops_per_item(case.model, case.config, case.dims) * per_image_rows * row["images"] * row["steps"]
    row.update(gflop=gflop / 1e9, achieved_gflops=gflop / 1e9 / row["median_s"])
    peak = peaks.get(row["compute_precision"], {}).get("gflops")
    row.update(peak_gflops=peak, peak_fraction=row["achieved_gflops"] / peak if peak else None)


def _breakdown(row: dict, engine, fns: LoopFns, case, chunk: int, device, repeats: int = 3):
    """Where a step's time went, per job step (every chunk's call): the engine call at the loop's shape,
    one step's fresh noise (drawn per image on the CPU, as the job draws it), and the rest."""
    batch = chunk * fns.per_image_rows
    example = get_spec(case.model).example_inputs(batch, seed=0, **case.dims)
    feeds = {k: v.to(device) for k, v in example.items()}
    call = partial(engine.run, feeds)
    timed(call, device)
    engine_s = statistics.median(timed(call, device)[0] for _ in range(repeats))
    noise_s = 0.0
    if fns.noise is not None:
        draw = fns.noise(chunk)
        noise_s = statistics.median(timed(partial(draw, 0), device)[0] for _ in range(repeats))
    per_chunk = math.ceil(row["images"] / chunk)
    row.update(step_engine_ms=1e3 * engine_s * per_chunk, step_noise_ms=1e3 * noise_s * per_chunk)
    row["step_other_ms"] = row["per_step_ms"] - row["step_engine_ms"] - row["step_noise_ms"]


def loop_skip(name: str, call: dict | None, suite) -> str | None:
    """Why `name` sits out an end-to-end run (None: it runs). torch eager and diffusers always run."""
    if name in (REFERENCE, DIFFUSERS):
        return None
    if name in suite.loop_skip:
        return suite.loop_skip[name]
    if call is not None and call["skipped"]:
        return f"per call: {call['skipped']}"
    speedup = call and call["speedup_vs_torch"]
    if speedup is not None and speedup < 1 / suite.slow_factor:
        return f"{1 / call['speedup_vs_torch']:.1f}x slower than torch eager per call at this batch"
    return None


def loop_line(row: dict) -> str:
    head = f"  {row['scenario']} batch {row['batch']} x {row['steps']} steps {row['backend']:<12}"
    if row["skipped"]:
        return f"{head} skipped: {row['skipped']}"
    par = "" if row["parity_value"] is None else f", {row['parity_metric']} {row['parity_value']:.2g}"
    extra = " (extrapolated)" if row.get("extrapolated") else ""
    speed = "" if row["speedup_vs_torch"] is None else f" x{row['speedup_vs_torch']:.2f}"
    where = ""
    if row.get("step_engine_ms") is not None:
        frac = row["peak_fraction"] and f"{row['peak_fraction']:.0%} of {row['compute_precision']} peak; "
        where = (f" [{frac or ''}per step: engine {row['step_engine_ms']:.1f} ms, "
                 f"noise {row['step_noise_ms']:.1f}, other {row['step_other_ms']:.1f}]")
    return (f"{head} {row['median_s']:8.2f} s{extra} [{row['p10_s']:.2f}-{row['p90_s']:.2f}]"
            f"{speed}{par}{where}")
