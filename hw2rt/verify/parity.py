"""Parity: the same seeded inputs through the torch fp32 reference and a candidate engine.

Polygraphy's comparator, for hw2rt's models. Two levels:

- per call: `spec.example_inputs(batch, seed)` through both engines; per output the max and
  mean absolute error, MSE, cosine similarity, the output scale (max |ref|) and the relative
  tolerance the candidate needs (max abs error / scale). Budget: max abs error <= budget x scale,
  with budget 1e-4 for fp32 (reassociation and fused kernels only) and 1e-2 for fp16 (fp16 has an
  11-bit mantissa, relative step 4.9e-4; a few dozen layers of rounding land at ~1e-3 of the
  scale, measured; 1e-2 leaves 5-10x headroom while a real bug, such as a lost fp32 island or a
  dropped layer, is off by 1e-1 or more).
- end to end (the diffusion models): the whole sampler on both engines from the same noise,
  images saved as the assignment saves them (faces: per-image min-max, digits: (x+1)/2), and the
  image MSE on the 0..255 scale as the assignment grades it (mean over images). Budgets: fp32 0.05,
  fp16 0.3 (an image MSE of 0.3 is a tenth of a grey level on average).

Without a checkpoint, parity uses a seeded random model of a small configuration. A random UNet
makes a multi-step trajectory chaotic (tiny differences grow into different images), so its last
conv is scaled down ("damped"), and the report says so. For the ancestral DDPM (digits) x 0.1 is
enough. DDIM amplifies eps errors by sqrt(1-abar)/sqrt(abar) (~150 at t=951) through the x0 prediction, and
a random model's eps is not a consistent denoiser, so for the small face UNet (base 32, 32x32)
x 0.1 was still chaotic, measured: ORT fp32 vs torch fp32 (1e-6 relative per call) gave an image
MSE of 0.006 at 20 steps and 565 at 50 steps; ORT fp16 gave 16 at 20 steps. With x 0.02 the
model still shapes the image (eps x 0.9 moves it by an image MSE of ~5-90, eps = 0 by hundreds)
while fp32 and fp16 land well inside their budgets. The digit job's DDIM starts at t = T = 1000
(abar 4e-5, an amplification of ~160), and there x 0.1 was chaotic too: torch bf16 vs fp32 of the
bench's quick DigitUNet (n_feat 16, 4 steps) gave an image MSE of 0.69, ORT fp16 0.022; x 0.02
gave 0.089 and 0.003 (fp32 0 either way). So both diffusion models are damped x 0.02.
"""
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from hw2rt.engines import Engine, open_engine, resolve_source
from hw2rt.errors import Hw2rtError
from hw2rt.io import atomic_path, mse_255, to_uint8_minmax, to_uint8_signed
from hw2rt.models import build_model, get_spec
from hw2rt.options import QUANTIZED
from hw2rt.verify.trajectory import format_trajectory, plot_trajectory, run_loop, trajectory_report

BUDGETS = {
    "fp32": {"per_call_rel_max_abs": 1e-4, "e2e_image_mse_255": 0.05},
    "fp16": {"per_call_rel_max_abs": 1e-2, "e2e_image_mse_255": 0.3},
    # bf16 keeps 8 mantissa bits to fp16's 11: 3x fp16's per-call budget; images graded like fp16.
    "bf16": {"per_call_rel_max_abs": 3e-2, "e2e_image_mse_255": 0.3},
    # int8 (QDQ, 8-bit activations: a step of 1/255 of each tensor's range) needed 0.06-0.16 of the scale per
    # call on the bundled networks (digit UNet 0.060, face UNet 0.087, DANN 0.088 on USPS-like and 0.16 on
    # SVHN-like images, where `--localize` puts it at the first classifier Gemm amplifying the features'
    # rounding); 0.25 leaves 1.5x over the worst, while a lost scale or a wrong zero point is off by the
    # whole scale. Images are graded like fp16 and miss that (faces: an image MSE of ~20): the int8
    # verdict is the task's (`--task`, on by default for digit_unet), the image MSE is reported.
    "int8": {"per_call_rel_max_abs": 0.25, "e2e_image_mse_255": 0.3},
    # fp8 (E4M3: 3 mantissa bits, a rounding error up to 1/16 at every magnitude) on int8's calibration
    # needed 0.086-0.175 on the bundled networks (digit UNet 0.086, face UNet 0.104, DANNs 0.092 and
    # 0.175: 1.1-1.4x int8's), so int8's budget holds; graded like int8: the task decides.
    "fp8": {"per_call_rel_max_abs": 0.25, "e2e_image_mse_255": 0.3},
}
# Small configurations for parity of random models (CPU-friendly): (config, dims).
SMALL = {
    "face_unet": ({"base": 32, "norm_groups": 32}, {"height": 32, "width": 32}),
    "digit_unet": ({"n_feat": 32}, {}),
    "dann": ({}, {}),
    "digit_classifier": ({}, {}),
}
# The last conv of each diffusion model: scaled by DAMP in random models (see the module docstring).
LAST_CONV = {"face_unet": "out.2", "digit_unet": "out.3"}
DAMP = {"face_unet": 0.02, "digit_unet": 0.02}
# Default end-to-end settings: DDIM steps for faces, DDPM T for digits.
E2E_STEPS = {"face_unet": 20, "digit_unet": 50}
JOB_LOOPS = {"face_unet": "face-ddim", "digit_unet": "digit-ancestral"}  # the jobs' default loops


def random_model(model: str, config: dict | None = None, *, seed: int = 0,
                 damp: float | None = None) -> nn.Module:
    """A seeded random network (eval mode); diffusion models get their last conv scaled by `damp`
    (default DAMP[model]; 1.0 leaves it as initialised). Leaves torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, config).eval()
    damp = DAMP.get(model) if damp is None else damp
    if damp is not None and damp != 1.0 and model in LAST_CONV:
        conv = net.get_submodule(LAST_CONV[model])
        with torch.no_grad():
            conv.weight.mul_(damp)
            conv.bias.mul_(damp)
    return net


def compare_outputs(ref: dict, cand: dict, rel_budget: float) -> dict:
    """Per-output statistics of `cand` against `ref` (float64), and whether each meets the budget."""
    stats = {}
    for name, r in ref.items():
        r = r.detach().to("cpu", torch.float64)
        c = cand[name].detach().to("cpu", torch.float64)
        d = (c - r).abs()
        finite = bool(torch.isfinite(c).all())
        scale = float(r.abs().max())
        max_abs = float(d.max()) if finite else math.inf
        rf, cf = r.flatten(), c.flatten()
        denom = float(rf.norm() * cf.norm())
        cosine = float(rf @ cf) / denom if denom > 0 and finite else (1.0 if rf.equal(cf) else 0.0)
        stats[name] = {
            "shape": list(r.shape),
            "max_abs": max_abs,
            "mean_abs": float(d.mean()) if finite else math.inf,
            "mse": float((d ** 2).mean()) if finite else math.inf,
            "cosine": cosine,
            "scale": scale,
            "required_rtol": max_abs / scale if scale > 0 else max_abs,
            "required_atol": max_abs,
            "budget_rtol": rel_budget,
            "nonfinite": not finite,
            "passed": finite and max_abs <= rel_budget * max(scale, 1e-12),
        }
    return stats


def per_call(reference: Engine, candidate: Engine, *, batch: int = 4, seed: int = 0, dims: dict | None = None,
             rel_budget: float) -> dict:
    spec = get_spec(reference.model)
    feeds = spec.example_inputs(batch, seed, **(dims or {}))
    outputs = compare_outputs(reference.run(feeds), candidate.run(feeds), rel_budget)
    return {"batch": batch, "seed": seed, "dims": dims or {}, "outputs": outputs,
            "passed": all(o["passed"] for o in outputs.values())}


def sample_images(engine: Engine, loop: str, x_T: torch.Tensor, *, steps: int, seed: int = 0, w: float = 2.0,
                  eta: float = 0.0) -> list:
    """One whole job loop (`trajectory.LOOPS`) on `engine`, its images as the assignment saves them
    (uint8 [H,W,3]: faces per-image min-max, digits (x+1)/2)."""
    out = run_loop(loop, engine, x_T, steps=steps, seed=seed, w=w, eta=eta).cpu()
    to_uint8 = to_uint8_minmax if loop == "face-ddim" else to_uint8_signed
    return [to_uint8(img) for img in out]


def end_to_end(reference: Engine, candidate: Engine, *, images: int = 2, seed: int = 0,
               dims: dict | None = None, steps: int | None = None, guidance: float = 2.0,
               budget: float, loop: str | None = None, eta: float = 0.0) -> dict | None:
    """The full sampler (`loop`, default the job's, JOB_LOOPS) on both engines from the same noise; image
    MSE (0..255) per image. None for the classifiers, which have no sampler."""
    model = reference.model
    if model not in E2E_STEPS:
        return None
    steps = steps or E2E_STEPS[model]
    loop = loop or JOB_LOOPS[model]
    x = start_noise(model, images, seed, dims)
    result = {"sampler": "ddim eta=0" if model == "face_unet"
              else f"{loop.removeprefix('digit-').replace('ancestral', 'ddpm')} cfg w={guidance}",
              "steps": steps, "images": images, "seed": seed}
    pics, secs = [], []
    for engine in (reference, candidate):
        t0 = time.perf_counter()
        pics.append(sample_images(engine, loop, x, steps=steps, seed=seed, w=guidance, eta=eta))
        secs.append(time.perf_counter() - t0)
    mses = [mse_255(a, b) for a, b in zip(*pics)]
    mean = sum(mses) / len(mses)
    result.update({"image_mse_255": mses, "mean_image_mse_255": mean, "max_image_mse_255": max(mses),
                   "budget_image_mse_255": budget, "seconds": {"reference": secs[0], "candidate": secs[1]},
                   "passed": mean <= budget})
    return result


def start_noise(model: str, images: int, seed: int, dims: dict | None) -> torch.Tensor:
    """The sampler's starting noise (faces; the digit loops draw their own from the seed and use only
    its batch size)."""
    spec = get_spec(model)
    x_shape = spec.inputs[0].concrete_shape({**spec.default_dims, **(dims or {}), "batch": images})
    return torch.randn(x_shape, generator=torch.Generator().manual_seed(seed))


def parity_report(reference: Engine, candidate: Engine, *, batch: int = 4, seed: int = 0,
                  dims: dict | None = None, e2e: bool = True, e2e_images: int = 2, steps: int | None = None,
                  source: dict | None = None, trajectory: str | None = None, eta: float = 0.0,
                  task=None, task_labels=None, localize: bool = False, cache_dir=None,
                  threads: int | None = None, sampler: str | None = None) -> dict:
    """Compare `candidate` with `reference` (the torch fp32 engine of the same weights); `sampler`
    (digit_unet: one of `options.SAMPLERS`, with `eta` for ddim) is the digit loop of the end-to-end run
    and the task (default: the job's loop, and the task gate's DDIM); with
    `trajectory` (one of `trajectory.LOOPS`), also step by step along that loop; with `task` (digit_unet:
    a number of digits; dann, digit_classifier: an image folder, `task_labels` its CSV), the task's grade
    (task.py), which then stands in for the image MSE in the verdict; with `localize` (or when the per-call
    check fails), the first diverging node of the candidate's ONNX graph (localize.py)."""
    budgets = BUDGETS[candidate.precision]
    digit_loop = f"digit-{sampler}" if sampler and reference.model == "digit_unet" else None
    report = {
        "model": reference.model,
        "source": source or {},
        "reference": {"backend": reference.backend, "precision": reference.precision,
                      "device": str(reference.device)},
        "candidate": {**candidate.describe(), "name": candidate.name},
        "budgets": budgets,
        "per_call": per_call(reference, candidate, batch=batch, seed=seed, dims=dims,
                             rel_budget=budgets["per_call_rel_max_abs"]),
        "end_to_end": end_to_end(reference, candidate, images=e2e_images, seed=seed, dims=dims, steps=steps,
                                 budget=budgets["e2e_image_mse_255"], loop=digit_loop,
                                 eta=eta if digit_loop else 0.0) if e2e else None,
    }
    if trajectory is not None:
        report["trajectory"] = trajectory_report(
            reference, candidate, loop=trajectory, x_T=start_noise(reference.model, e2e_images, seed, dims),
            steps=steps or E2E_STEPS[reference.model], seed=seed, eta=eta,
            rel_budget=budgets["per_call_rel_max_abs"])
    if task is not None:
        report["task"] = task_report(reference, candidate, task, labels_csv=task_labels, seed=seed,
                                     steps=steps, sampler=sampler, eta=eta)
    if localize or not report["per_call"]["passed"]:
        report["localize"] = localize_report(reference, candidate, batch=batch, seed=seed, dims=dims,
                                             rel_budget=budgets["per_call_rel_max_abs"], cache_dir=cache_dir,
                                             threads=threads)
    images_ok = (report["task"] if task is not None else report["end_to_end"] or {}).get("passed", True)
    report["passed"] = (report["per_call"]["passed"] and images_ok
                        and report.get("trajectory", {}).get("passed", True)
                        and (report.get("localize") or {}).get("first_divergent") is None)
    return report


def task_report(reference: Engine, candidate: Engine, task, *, labels_csv=None, seed: int = 0,
                steps: int | None = None, sampler: str | None = None, eta: float = 0.0) -> dict:
    """The task-level grade (task.py): digit_unet: `task` digits of `sampler` (default the gate's loop:
    guided DDIM, eta 1, w 2), `steps` or 50 steps; dann / digit_classifier: the labels of the image folder
    `task`."""
    from hw2rt.verify.task import check_task, digit_agreement, label_agreement

    task = check_task(reference.model, task)
    if reference.model == "digit_unet":
        loop = {"sampler": sampler, "eta": eta} if sampler else {"sampler": "ddim", "eta": 1.0}
        return digit_agreement(reference, candidate, task, seed=seed, steps=steps or 50, **loop)
    return label_agreement(reference, candidate, task, labels_csv=labels_csv)


def localize_report(reference: Engine, candidate: Engine, *, batch: int, seed: int, dims: dict | None,
                    rel_budget: float, cache_dir=None, threads: int | None = None) -> dict:
    """The first node of the candidate's ONNX graph whose output leaves the budget, against the fp32 export
    of the reference's weights, on the per-call feeds. Engines without a graph are reported as skipped."""
    from hw2rt.engines.weights import cached_onnx
    from hw2rt.verify.localize import localize

    graph = getattr(candidate, "path", None)
    if graph is None or candidate.backend not in ("ort", "openvino"):
        return {"skipped": f"the {candidate.backend} engine has no ONNX graph to localize in",
                "first_divergent": None}
    reference_graph = cached_onnx(reference.model, resolve_source(reference.model, reference.module),
                                  precision="fp32", cache_dir=cache_dir).path
    feeds = get_spec(reference.model).example_inputs(batch, seed, **(dims or {}))
    return localize(graph, reference_graph, feeds, rel_budget=rel_budget, threads=threads,
                    engine=candidate if candidate.backend == "openvino" else None)


def open_pair(model: str, checkpoint=None, *, backend: str = "auto", precision: str = "fp32", device="auto",
              threads: int | None = None, cache_dir=None, seed: int = 0, dims: dict | None = None, onnx=None,
              calibration_images=None):
    """(reference, candidate, source, dims): the torch fp32 CPU engine, and the candidate opened by
    `open_engine` exactly as the commands open it.

    With `checkpoint`, its weights (the candidate opens the file itself, so ort and trt export
    through the same cache entry as the commands); without, a seeded random model of the small
    configuration in SMALL, damped (see above), and SMALL's dims unless `dims` is given.
    With `onnx` (an hw2rt export of `checkpoint`, default the bundled one), the candidate is that graph
    on ONNX Runtime (its own precision); a graph of other weights is refused. `calibration_images`:
    int8/fp8 dann / digit_classifier (see `open_engine`).
    """
    from hw2rt.checkpoints import resolve_checkpoint

    spec = get_spec(model)
    if onnx is not None:
        checkpoint = resolve_checkpoint(checkpoint, spec.name)
    if checkpoint is None:
        config, small_dims = SMALL[spec.name]
        net = random_model(spec.name, config, seed=seed)
        dims = {**small_dims, **(dims or {})}
        source = {"checkpoint": None, "random_seed": seed, "config": net.config,
                  "damped": f"{LAST_CONV[spec.name]} x {DAMP[spec.name]}" if spec.name in LAST_CONV else None,
                  "note": "seeded random weights" + (
                      f"; last conv {LAST_CONV[spec.name]} scaled by {DAMP[spec.name]} so the multi-step"
                      " trajectory is not chaotic" if spec.name in LAST_CONV else "")}
        cand_source = net
    else:
        weights = resolve_source(spec.name, checkpoint)
        net = weights.net
        source = {"checkpoint": weights.label, "sha256": weights.sha256, "config": net.config}
        cand_source = weights.path
    reference = open_engine(spec.name, net, backend="torch", precision="fp32", device="cpu", graphs=False,
                            threads=threads)
    if onnx is not None:
        candidate = open_engine(spec.name, onnx, backend="ort", device=device, threads=threads,
                                cache_dir=cache_dir)
        exported_from = candidate.metadata.get("source_sha256", "")
        if exported_from != weights.sha256:
            candidate.close()
            raise Hw2rtError(f"{onnx}: exported from other weights (sha256 "
                             f"{exported_from[:12] or 'unknown'}) than {weights.label} "
                             f"({weights.sha256[:12]}); give --checkpoint the file it was exported from")
    else:
        candidate = open_engine(spec.name, cand_source, backend=backend, precision=precision, device=device,
                                threads=threads, cache_dir=cache_dir, dims=dims,
                                calibration_images=calibration_images)
    return reference, candidate, source, dims


def run_parity(model: str, checkpoint=None, *, backend: str = "auto", precision: str = "fp32", device="auto",
               threads: int | None = None, cache_dir=None, batch: int = 4, seed: int = 0,
               dims: dict | None = None, e2e: bool = True, e2e_images: int = 2, steps: int | None = None,
               trajectory: str | None = None, eta: float = 0.0, onnx=None, localize: bool = False, task=None,
               task_labels=None, json_path=None, plot_path=None, sampler: str | None = None) -> dict:
    """`hw2rt parity`: the torch fp32 CPU reference against `backend`/`precision` on `device`, or against
    the graph `onnx` (see `open_pair`). Writes the report as JSON to `json_path` and the trajectory's plot
    to `plot_path` when given. Returns the report dict."""
    # int8/fp8 classifiers calibrate on the task's folder: the target domain's images (no labels)
    quantized = precision in (*QUANTIZED, "auto")  # auto may choose int8
    calibration = task if quantized and model in ("dann", "digit_classifier") else None
    reference, candidate, source, dims = open_pair(model, checkpoint, backend=backend, precision=precision,
                                                   device=device, threads=threads, cache_dir=cache_dir,
                                                   seed=seed, dims=dims, onnx=onnx,
                                                   calibration_images=calibration)
    try:
        report = parity_report(reference, candidate, batch=batch, seed=seed, dims=dims, e2e=e2e,
                               e2e_images=e2e_images, steps=steps, source=source, trajectory=trajectory,
                               eta=eta, task=task, task_labels=task_labels, localize=localize,
                               cache_dir=cache_dir, threads=threads, sampler=sampler)
    finally:
        candidate.close()
        reference.close()
    if plot_path is not None and "trajectory" in report:
        plot_trajectory(report["trajectory"], plot_path)
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _g(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def format_report(report: dict) -> str:
    """A readable table of a parity report (markdown-compatible)."""
    from hw2rt.verify.localize import format_localize
    from hw2rt.verify.task import format_task

    def ok(b):
        return "ok" if b else "FAIL"

    c, r = report["candidate"], report["reference"]
    src = report["source"]
    head = (f"parity {report['model']}: {c['backend']} {c['precision']} {c['device']} vs "
            f"{r['backend']} {r['precision']} {r['device']}: {'PASSED' if report['passed'] else 'FAILED'}")
    lines = [head] + ([c["auto"]] if c.get("auto") else [])
    if src.get("checkpoint"):
        lines.append(f"weights: {src['checkpoint']} (sha256 {src.get('sha256', '')[:12]})")
    elif src:
        lines.append(f"weights: {src.get('note', 'random')}, config {json.dumps(src.get('config', {}))}")
    pc = report["per_call"]
    lines += ["", (f"per call (batch {pc['batch']}, seed {pc['seed']}"
                   f"{', dims ' + json.dumps(pc['dims']) if pc['dims'] else ''}):"),
              "| output | max abs | mean abs | MSE | cosine | scale | needs rtol | budget rtol | |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, s in pc["outputs"].items():
        lines.append(f"| {name} | {_g(s['max_abs'])} | {_g(s['mean_abs'])} | {_g(s['mse'])} | "
                     f"{s['cosine']:.7f} | {_g(s['scale'])} | {_g(s['required_rtol'])} | "
                     f"{_g(s['budget_rtol'])} | {ok(s['passed'])} |")
    lines += [f"NaN/Inf in the candidate's output {name} (per call)" for name, s in pc["outputs"].items()
              if s["nonfinite"]]
    e = report.get("end_to_end")
    if e:
        line = (f"end to end ({e['sampler']}, {e['steps']} steps, {e['images']} images, seed {e['seed']}): "
                f"image MSE (0..255) mean {_g(e['mean_image_mse_255'])}, max {_g(e['max_image_mse_255'])}, "
                f"budget {_g(e['budget_image_mse_255'])}: "
                f"{ok(e['passed']) if 'task' not in report else 'reported (the task decides)'}  "
                f"[{e['seconds']['reference']:.1f}s reference, {e['seconds']['candidate']:.1f}s candidate]")
        lines += ["", line]
    if "trajectory" in report:
        lines += ["", format_trajectory(report["trajectory"])]
    if "task" in report:
        lines += ["", format_task(report["task"])]
    if "localize" in report:
        loc = report["localize"]
        lines += ["", f"localize: skipped ({loc['skipped']})" if "skipped" in loc else format_localize(loc)]
    return "\n".join(lines)
