"""The scenarios every suite is made of: the per-call sweep, the jobs' own loops (faces through the
face job's DDIM loop, digits through the digit job's loop), DANN over a folder as `hw2rt classify`
runs it, and the cost growth of the digit loop. Runners alternate, so a shared machine's load hits
all alike; every ratio and parity figure is against torch eager fp32 in the same run.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from hw2rt.bench.measure import PeakMemory, alternate, flops_per_item, linear_fit, summarize, sync, timed
from hw2rt.bench.runners import DIFFUSERS, REFERENCE, RUNNERS, compute_precision
from hw2rt.io import mse_255, to_uint8_minmax, to_uint8_signed
from hw2rt.models import get_spec
from hw2rt.parity import BUDGETS, compare_outputs
from hw2rt.runtime.ddpm import guided_denoiser
from hw2rt.runtime.jobs import classify_job, digit_noise, digit_plan, sample_digits, sample_faces

# Every row has every key (None where not measured): the JSON's shape does not depend on what ran.
CALL_FIELDS = ("median_ms", "p10_ms", "p90_ms", "n", "first_call_ms", "first_call_memory_mib", "items_per_s",
               "gflop_per_call", "achieved_gflops", "peak_gflops", "peak_fraction", "memory_mib",
               "memory_method", "parity_metric", "parity_value", "parity_budget", "parity_passed",
               "speedup_vs_torch", "skipped")
SCENARIO_FIELDS = ("median_s", "p10_s", "p90_s", "n", "per_step_ms", "images_per_s", "speedup_vs_torch",
                   "parity_metric", "parity_value", "parity_budget", "parity_passed", "extrapolated",
                   "skipped")


def _empty_row(**ids) -> dict:
    return {**ids, **dict.fromkeys(CALL_FIELDS)}


def _scenario_row(**ids) -> dict:
    return {**dict.fromkeys(SCENARIO_FIELDS), **ids}


def sweep(case, engines: dict, suite, *, device, peaks: dict, log) -> list:
    """Per call, every runner over `case.batches`: latency (median and p10-p90 of repeated calls after
    two warm-up calls), throughput, the peak memory of one call, FLOPs from torch's FLOP counter ->
    FLOP/s and its fraction of the measured peak of the runner's precision, and parity of the outputs
    against torch eager fp32. Engines that failed to open are their reason (a string)."""
    spec = get_spec(case.model)
    per_item = flops_per_item(case.model, case.config, case.dims)
    rows, steady = [], {}  # steady[name] = (batch, seconds of one call)
    for batch in case.batches:
        feeds = {k: v.to(device) for k, v in spec.example_inputs(batch, seed=0, **case.dims).items()}
        active, point = {}, {}
        for name, engine in engines.items():
            r = RUNNERS[name]
            point[name] = _empty_row(model=case.model, config=case.config, dims=case.dims, batch=batch,
                                     backend=name, label=r["label"], precision=r["precision"],
                                     compute_precision=compute_precision(name, device))
            if isinstance(engine, str):  # it failed to open: the reason
                point[name]["skipped"] = engine
            elif name in case.skip:
                point[name]["skipped"] = case.skip[name]
            elif "compile" in name and case.compile_batches is not None and batch not in case.compile_batches:
                where = ", ".join(map(str, case.compile_batches))
                point[name]["skipped"] = (f"torch.compile specialises on the batch size; measured at batch "
                                          f"{where} only (a compile takes minutes here)")
            elif name != REFERENCE and name in steady:
                b0, s0 = steady[name]
                predicted = s0 * batch / b0 * (2 + suite.min_repeats)
                if predicted > suite.max_point_s:
                    point[name]["skipped"] = (f"predicted {predicted:.0f} s for this point "
                                              f"({s0 * 1e3:.0f} ms per call at batch {b0}) > the "
                                              f"{suite.max_point_s:.0f} s limit")
            if point[name]["skipped"] is None:
                active[name] = engine
        outs, est = {}, {}
        fns = {n: partial(e.run, feeds) for n, e in active.items()}
        for name, fn in fns.items():  # warm-up: a first call (compiles, allocates), then a steady one
            with PeakMemory(device) as first_mem:
                first, _ = timed(fn, device)
            with PeakMemory(device) as mem:
                est[name], outs[name] = timed(fn, device)
            point[name].update(first_call_ms=1e3 * first, first_call_memory_mib=first_mem.mib,
                               memory_mib=mem.mib, memory_method=mem.method)
        repeats = {n: max(suite.min_repeats, min(suite.max_repeats, round(suite.point_s / max(est[n], 1e-6))))
                   for n in active}
        times, _ = alternate(fns, repeats, device)
        ref = point[REFERENCE]
        for name in active:
            row = point[name]
            row.update(summarize(times[name]))
            secs = row["median_ms"] / 1e3
            steady[name] = (batch, secs)
            peak = peaks.get(row["compute_precision"], {}).get("gflops")
            gflop = per_item * batch / 1e9
            budget = BUDGETS[row["precision"]]["per_call_rel_max_abs"]
            stats = compare_outputs(outs[REFERENCE], outs[name], budget) if REFERENCE in outs else {}
            row.update(items_per_s=batch / secs, gflop_per_call=gflop, achieved_gflops=gflop / secs,
                       peak_gflops=peak, peak_fraction=gflop / secs / peak if peak else None,
                       parity_metric="rel_max_abs", parity_budget=budget,
                       parity_value=max((s["required_rtol"] for s in stats.values()), default=None),
                       parity_passed=all(s["passed"] for s in stats.values()) if stats else None)
        for name, row in point.items():
            if row["median_ms"] is not None and ref["median_ms"] is not None:
                row["speedup_vs_torch"] = ref["median_ms"] / row["median_ms"]
            rows.append(row)
            log(_row_line(row))
    return rows


def _row_line(row: dict) -> str:
    head = f"  {row['model']} batch {row['batch']:>4} {row['backend']:<12}"
    if row["skipped"]:
        return f"{head} skipped: {row['skipped']}"
    frac = f", {row['peak_fraction']:.0%} of {row['compute_precision']} peak" if row["peak_fraction"] else ""
    return (f"{head} {row['median_ms']:9.1f} ms [{row['p10_ms']:.1f}-{row['p90_ms']:.1f}] "
            f"x{row['speedup_vs_torch']:.2f}{frac}, parity {row['parity_value']:.1e}")


# --- end-to-end loops --------------------------------------------------------------------------------------

@dataclass
class Loop:
    """An end-to-end scenario: `images` through the job's loop for `steps` (DDIM steps, or T)."""

    images: int
    steps: int
    sampler: str = "ddim"  # digits: the digit job's sampler
    repeats: int = 3
    cap_s: float | None = None  # a timed run stops here and is extrapolated
    # runner -> steps after which it stops (a slow GPU reference)
    max_steps: dict = field(default_factory=dict)
    parity_images: int | None = None  # the first images run in full for parity when a run stopped early


class StopEarly(Exception):
    """Raised by a loop's step callback at its time cap or step limit."""


@dataclass
class Partial:
    """A timed run stopped early: `done` of `steps` steps ran (its time is extrapolated linearly)."""

    done: int
    steps: int


def diffusers_ddim(eps_fn, x: torch.Tensor, steps: int, timesteps: list | None = None,
                   train_steps: int = 1000) -> torch.Tensor:
    """The external baseline: diffusers' DDIMScheduler, configured as HW2_SPEC.md says, eta = 0.

    Faces: its own "leading" timesteps. Digits: `train_steps` = T + 1 betas (the digit table's
    length) and the digit job's `timesteps` in place of its own; diffusers steps to t - (T+1)//steps,
    so it runs the digit job's trajectory exactly when `steps` divides T.
    """
    from diffusers import DDIMScheduler  # imported by the *_loop_fns builders already: not timed here

    sched = DDIMScheduler(num_train_timesteps=train_steps, beta_start=1e-4, beta_end=0.02,
                          beta_schedule="linear", timestep_spacing="leading", steps_offset=1,
                          set_alpha_to_one=False, clip_sample=True)
    sched.set_timesteps(steps)
    for t in (sched.timesteps if timesteps is None else torch.tensor(timesteps)):
        eps = eps_fn(x, t.expand(x.shape[0]).to(x.device))
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x


def digit_loop_fns(engines: dict, net, loop, device, w: float = 2.0) -> tuple[dict, dict]:
    """The digit job's loop per runner (`sample_digits` with `loop.sampler`: one doubled guidance batch
    per step), and diffusers' DDIM on the plain module for the DDIM sampler. A run stops at
    `loop.cap_s` seconds or at `loop.max_steps[runner]` steps and returns a `Partial`. Also the parity
    runs: the first `loop.parity_images` images, in full, per runner."""
    from diffusers import DDIMScheduler  # noqa: F401 -- slow to import: never inside a timed run

    plan = digit_plan(loop.sampler, loop.steps, w=w)
    labels = torch.arange(loop.images) % 10
    total = len(plan.timesteps)
    check_every = 20 if str(device).startswith("cuda") else 1  # a sync per check: rarely on a GPU

    def run(engine, n, cap_s=None, max_steps=None):
        start = time.perf_counter()
        done = [0]

        def callback(_first, i, _t, _x, _x0):
            done[0] = i + 1
            if i + 1 >= total:
                return
            if max_steps is not None and i + 1 >= max_steps:
                raise StopEarly
            if cap_s is not None and (i + 1) % check_every == 0:
                sync(device)
                if time.perf_counter() - start > cap_s:
                    raise StopEarly

        try:
            return sample_digits(engine, labels[:n], plan, batch_size=n, callback=callback,
                                 progress=False)
        except StopEarly:
            return Partial(done[0], total)

    fns = {name: partial(run, e, loop.images, loop.cap_s, loop.max_steps.get(name))
           for name, e in engines.items()}
    parity = {name: partial(run, e, loop.parity_images or loop.images) for name, e in engines.items()}
    if loop.sampler == "ddim":
        def plain(xt, ct, tt, mask):
            with torch.inference_mode():
                return net(xt, ct, tt, mask)

        x = digit_noise(loop.images)[0].to(device)
        guided_plain = guided_denoiser(plain, w, labels.to(device), plan.schedule.T)
        fns[DIFFUSERS] = lambda: diffusers_ddim(guided_plain, x, loop.steps, plan.timesteps,
                                                train_steps=plan.schedule.T + 1)
        parity[DIFFUSERS] = lambda: fns[DIFFUSERS]()[:loop.parity_images or loop.images]
    return fns, parity


def face_loop_fns(engines: dict, net, loop, dims: dict, device) -> tuple[dict, dict]:
    """The face job's DDIM loop (eta 0) per runner, and diffusers'; parity runs on the same images."""
    from diffusers import DDIMScheduler  # noqa: F401 -- slow to import: never inside a timed run

    g = torch.Generator().manual_seed(1)
    x = torch.randn(loop.images, 3, dims["height"], dims["width"], generator=g).to(device)
    fns = {n: partial(sample_faces, e, x, steps=loop.steps, batch_size=loop.images, progress=False)
           for n, e in engines.items()}

    def plain(xt, t):
        with torch.inference_mode():
            return net(xt, t)

    fns[DIFFUSERS] = lambda: diffusers_ddim(plain, x, loop.steps)
    return fns, fns


def loop_scenario(scenario: str, case, fns: dict, parity_fns: dict, per_call: list, *, loop, suite, device,
                  log) -> list:
    """Time whole loops, alternating runners; image MSE (0..255) against torch eager, from the timed
    runs, or from the parity runs where a timed run stopped early (then its time is extrapolated)."""
    model = case.model
    batch = loop.images * (2 if model == "digit_unet" else 1)  # guidance doubles the digit batch
    to_uint8 = to_uint8_minmax if model == "face_unet" else to_uint8_signed
    calls = {r["backend"]: r for r in per_call if r["model"] == model and r["batch"] == batch}
    rows, active = {}, {}
    for name, fn in fns.items():
        precision = "fp32" if name == DIFFUSERS else RUNNERS[name]["precision"]
        label = ("diffusers DDIMScheduler loop, torch eager fp32" if name == DIFFUSERS
                 else RUNNERS[name]["label"])
        row = _scenario_row(scenario=scenario, model=model, config=case.config, dims=case.dims, batch=batch,
                            images=loop.images, steps=loop.steps, backend=name, label=label,
                            precision=precision, parity_metric="image_mse_255",
                            parity_budget=BUDGETS[precision]["e2e_image_mse_255"],
                            skipped=_loop_skip(name, calls.get(name), suite))
        if row["skipped"] is None:
            active[name] = fn
        rows[name] = row
    times, outs = alternate(active, dict.fromkeys(active, loop.repeats), device)
    complete = {n: o for n, o in outs.items() if not isinstance(o, Partial)}
    if REFERENCE not in complete or len(complete) < len(outs):  # images for parity from full runs
        complete = {n: parity_fns[n]() for n in active}
    ref = [to_uint8(img) for img in complete[REFERENCE].cpu()]
    for name in active:
        row = rows[name]
        row.update(summarize(times[name], "s"))
        if isinstance(outs[name], Partial):
            scale = outs[name].steps / max(outs[name].done, 1)
            row.update(median_s=row["median_s"] * scale, p10_s=row["p10_s"] * scale,
                       p90_s=row["p90_s"] * scale,
                       extrapolated=f"ran {outs[name].done} of {outs[name].steps} steps; "
                                    "time scaled linearly")
        row.update(per_step_ms=1e3 * row["median_s"] / loop.steps, images_per_s=loop.images / row["median_s"])
        mses = [mse_255(a, to_uint8(b)) for a, b in zip(ref, complete[name].cpu())]
        row["parity_value"] = sum(mses) / len(mses)
        row["parity_passed"] = row["parity_value"] <= row["parity_budget"]
    for row in rows.values():
        if row["median_s"] is not None and rows[REFERENCE]["median_s"] is not None:
            row["speedup_vs_torch"] = rows[REFERENCE]["median_s"] / row["median_s"]
        log(_loop_line(row))
    return list(rows.values())


def _loop_skip(name: str, call: dict | None, suite) -> str | None:
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


def _loop_line(row: dict) -> str:
    head = f"  {row['scenario']} batch {row['batch']} x {row['steps']} steps {row['backend']:<12}"
    if row["skipped"]:
        return f"{head} skipped: {row['skipped']}"
    par = "" if row["parity_value"] is None else f", {row['parity_metric']} {row['parity_value']:.2g}"
    extra = " (extrapolated)" if row.get("extrapolated") else ""
    return (f"{head} {row['median_s']:8.2f} s{extra} [{row['p10_s']:.2f}-{row['p90_s']:.2f}] "
            f"x{row['speedup_vs_torch']:.2f}{par}")


def dann_folder_scenario(engines: dict, per_call: list, images: int, suite, device, log) -> list:
    """DANN inference over a folder of random 28x28 PNGs, as `hw2rt classify` runs it (I/O included)."""
    import numpy as np
    from PIL import Image

    batch = min(512, images)
    calls = {r["backend"]: r for r in per_call if r["model"] == "dann" and r["batch"] == batch}
    rows = []
    with tempfile.TemporaryDirectory(prefix="hw2rt-bench-") as tmp:
        folder = Path(tmp, "images")
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(images):
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
        fns, active = {}, {}
        for name, engine in engines.items():
            # Label agreement is informational (no budget): a random DANN's log-probabilities are
            # near ties that rounding flips where a trained one's would not; the sweep's per-call
            # parity is the budgeted check.
            row = _scenario_row(scenario="dann_folder", model="dann", config={}, dims={}, batch=batch,
                                images=images, steps=None, backend=name, label=RUNNERS[name]["label"],
                                precision=RUNNERS[name]["precision"], parity_metric="label_agreement",
                                skipped=_loop_skip(name, calls.get(name), suite))
            rows.append(row)
            if row["skipped"] is None:
                def classify(e=engine, csv=Path(tmp, f"{name}.csv")):
                    classify_job(e, folder, csv, batch_size=batch, progress=False)
                    return csv.read_text()

                fns[name] = classify
                active[name] = row
        times, outs = alternate(fns, dict.fromkeys(fns, suite.loop_repeats), device)
    ref = outs.get(REFERENCE, "").splitlines()
    for name, row in active.items():
        row.update(summarize(times[name], "s"))
        row["images_per_s"] = images / row["median_s"]
        if ref:
            got = outs[name].splitlines()
            row["parity_value"] = sum(a == b for a, b in zip(ref[1:], got[1:])) / max(1, len(ref) - 1)
    for row in rows:
        if row["median_s"] is not None and REFERENCE in active:
            row["speedup_vs_torch"] = active[REFERENCE]["median_s"] / row["median_s"]
        log(_loop_line({**row, "steps": "-"}))
    return rows


def growth_scenario(engines: dict, net, growth: dict, device, log) -> list:
    """Time of the digit job's DDIM loop against images (at base_steps) and against steps (at
    steps_images), one run per point, runners alternating; fitted to a + b*n."""
    out = []
    axes = (("images", growth["images"], lambda n: (n, growth["base_steps"])),
            ("steps", growth["steps"], lambda n: (growth["steps_images"], n)))
    for axis, values, args in axes:
        secs = {n: [] for n in engines}
        for i, v in enumerate(values):
            images, steps = args(v)
            fns, _ = digit_loop_fns(engines, net, Loop(images=images, steps=steps), device)
            fns.pop(DIFFUSERS)
            order = list(engines) if i % 2 == 0 else list(engines)[::-1]
            for name in order:
                secs[name].append(timed(fns[name], device)[0])
        fixed = {"steps": growth["base_steps"]} if axis == "images" else {"images": growth["steps_images"]}
        for name in engines:
            fit = linear_fit(list(values), secs[name])
            out.append({"loop": "digit_ddim_loop", "backend": name, "axis": axis, "fixed": fixed,
                        "values": list(values), "seconds": secs[name], "fit": fit})
            log(f"  growth {name:<10} vs {axis}: {fit['a_s']:.3f} s + {fit['b_s']:.3f} s x {axis}, "
                f"R^2 {fit['r2']:.4f}")
    return out
