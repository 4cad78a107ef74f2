"""Parity along a whole sampling trajectory: the candidate engine against the torch fp32 reference,
step by step, through the jobs' own loops (`jobs.sample_faces`, `jobs.sample_digits`).

Both engines start from the same noise and draw every z from the same per-image generators, so any
difference is the engines'. Two runs of the candidate:

- free: the candidate follows its own trajectory; its error at step i is drift (all earlier per-call
  errors, amplified by the sampler);
- forced: after every step the latent is put back to the reference's (the step callback copies it in
  place), so its error at step i is that one step's alone. The multistep solvers keep a memory that is not
  put back (DPM-Solver++(2M) its last x0, one step on; UniPC also its last corrected latent), so there an
  error also reaches the steps after its own.

Per step: the latent's max abs error, RMS error and relative error (||x - x_ref|| / ||x_ref||), and
the predicted x0's max abs and RMS error. The budget is on the latent's relative error: a trajectory
may drift no further than one call may err (`parity.BUDGETS`, per call). A NaN or Inf in the
candidate's latent or x0 is a named failure: its run, step, timestep and tensor.
"""
import math

import torch

from hw2rt import options
from hw2rt.runtime import jobs

LOOPS = ("face-ddim", *(f"digit-{sampler}" for sampler in options.SAMPLERS))


def run_loop(loop: str, engine, x_T: torch.Tensor, *, steps: int, seed: int = 0, w: float = 2.0,
             eta: float = 0.0, callback=None) -> torch.Tensor:
    """One whole job loop on `engine` (all images in one chunk, so a callback sees the full batch); the
    digit loops draw their own noise from `seed` and use only the batch size of `x_T`."""
    if loop == "face-ddim":
        return jobs.sample_faces(engine, x_T.to(engine.device), steps=steps, eta=eta, batch_size=len(x_T),
                                 callback=callback, progress=False)
    labels = torch.arange(len(x_T), dtype=torch.int64) % 10
    plan = jobs.digit_plan(loop.removeprefix("digit-"), steps, eta=eta, w=w)
    return jobs.sample_digits(engine, labels, plan, seed=seed, batch_size=len(labels), callback=callback,
                              progress=False)


def _record(loop, engine, x_T, *, force=None, **kw):
    """[(t, x, x0)] per step on the CPU in float64; with `force` (the reference's record), each step's
    latent is replaced by the reference's before the next step."""
    steps = []

    def callback(_first, step, t, x, x0):
        steps.append((t, x.detach().to("cpu", torch.float64), x0.detach().to("cpu", torch.float64)))
        if force is not None:
            with torch.no_grad():
                x.copy_(force[step][1].to(x.device, x.dtype))

    run_loop(loop, engine, x_T, callback=callback, **kw)
    return steps


def _stats(ref, cand) -> dict:
    (t, x_r, x0_r), (_, x_c, x0_c) = ref, cand
    d, d0 = x_c - x_r, x0_c - x0_r
    ref_norm = float(x_r.norm())
    return {"t": int(t),
            "max_abs": float(d.abs().max()), "rms": float(d.pow(2).mean().sqrt()),
            "rel": float(d.norm()) / ref_norm if ref_norm > 0 else float(d.norm()),
            "x0_max_abs": float(d0.abs().max()), "x0_rms": float(d0.pow(2).mean().sqrt())}


def _nonfinite(record, run: str) -> dict | None:
    for step, (t, x, x0) in enumerate(record):
        for name, value in (("x", x), ("x0", x0)):
            if not bool(torch.isfinite(value).all()):
                return {"run": run, "step": step, "t": int(t), "tensor": name}
    return None


def trajectory_report(reference, candidate, *, loop: str, x_T: torch.Tensor, steps: int, seed: int = 0,
                      w: float = 2.0, eta: float = 0.0, rel_budget: float) -> dict:
    """Per-step errors of `candidate` against `reference` along `loop` from `x_T`, free and forced."""
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r}: {', '.join(LOOPS)}")
    kw = {"steps": steps, "seed": seed, "w": w, "eta": eta}
    ref = _record(loop, reference, x_T, **kw)
    runs = {"free": _record(loop, candidate, x_T, **kw),
            "forced": _record(loop, candidate, x_T, force=ref, **kw)}
    report = {"loop": loop, "steps": len(ref), "images": len(x_T), "seed": seed, "eta": eta,
              "w": None if loop == "face-ddim" else w, "budget_rel": rel_budget,
              "statistics": ["max_abs", "rms", "rel", "x0_max_abs", "x0_rms"]}
    failures = [f for f in (_nonfinite(rec, run) for run, rec in runs.items()) if f]
    for run, rec in runs.items():
        per_step = [_stats(r, c) for r, c in zip(ref, rec, strict=True)]
        over = next((i for i, s in enumerate(per_step) if not (s["rel"] <= rel_budget)), None)
        report[run] = {"per_step": per_step, "first_over_budget": over,
                       "final": per_step[-1] if per_step else None}
    report["nonfinite"] = failures[0] if failures else None
    report["passed"] = not failures and report["free"]["first_over_budget"] is None
    return report


def format_trajectory(report: dict) -> str:
    def step_line(run):
        r = report[run]
        f = r["final"]
        over = r["first_over_budget"]
        where = "none" if over is None else f"step {over} (t = {r['per_step'][over]['t']})"
        return (f"  {run:6s}: final max abs {f['max_abs']:.3g}, rms {f['rms']:.3g}, rel {f['rel']:.3g}, "
                f"x0 max abs {f['x0_max_abs']:.3g}; first step over budget: {where}")

    head = (f"trajectory ({report['loop']}, {report['steps']} steps, {report['images']} images, seed "
            f"{report['seed']}, budget rel {report['budget_rel']:g}): {'ok' if report['passed'] else 'FAIL'}")
    lines = [head, step_line("free"), step_line("forced")]
    if report["nonfinite"]:
        n = report["nonfinite"]
        lines.append(f"  NaN/Inf in the candidate's {n['tensor']} at step {n['step']} (t = {n['t']}), "
                     f"{n['run']} run")
    return "\n".join(lines)


def plot_trajectory(report: dict, path) -> None:
    """Error vs step, one line per statistic (log scale); free solid, forced dashed. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hw2rt.io import atomic_path

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for run, style in (("free", "-"), ("forced", "--")):
        per_step = report[run]["per_step"]
        for k, stat in enumerate(report["statistics"]):
            values = [max(s[stat], 1e-12) if math.isfinite(s[stat]) else float("nan") for s in per_step]
            ax.plot(range(len(values)), values, style, color=f"C{k}", label=f"{stat} ({run})")
    ax.axhline(report["budget_rel"], color="k", lw=0.8, ls=":", label="budget (rel)")
    over = report["free"]["first_over_budget"]
    if over is not None:
        ax.axvline(over, color="r", lw=0.8, label=f"first over budget: step {over}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("error vs torch fp32")
    ax.set_title(f"{report['loop']}: candidate vs reference, per step")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
