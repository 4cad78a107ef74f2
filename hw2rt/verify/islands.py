"""The island search: the smallest set of fp32 islands that keeps a diffusion model's images within
the fp16 or bf16 budget, found against the end-to-end metric rather than by rule. One search, two
kinds of trial (`precision`):

- fp16: the exported fp16 graph on ONNX Runtime (below);
- bf16: the torch backend's bf16 module (`TorchEngine(..., islands=...)`, the one the engine runs with
  `engines/torch.fp32_islands`), whose islands are module names. Its candidates are groups of the
  modules that own weights, one group per role and feature-map size ("*.resblocks.conv1 64x64": the
  conv1 of every ResBlock working at 64x64), so a trial keeps or drops a kind of layer at one level of
  the UNet; a top-level module with no feature map (the face UNet's `time`) or a single layer (`down1`)
  is a group of its own. Groups are tried most expensive first (multiply-adds at the search's size),
  so the shrink drops the islands that cost most before the cheap ones. The default islands are
  `fp32_islands(model, "bf16")`; there is no graph to write and no CPU fidelity to check: the trial is
  what the torch engine runs, and OpenVINO's bf16 marks the same module names.

The fp16 trial, in detail:

Candidates (named as `export/fp16.py` names islands): the default islands (every GroupNorm, the
face UNet's timestep embedding, every softmax site) and EXTRA_CANDIDATES (the output conv; the digit
UNet's time and label embeddings). A trial exports the fp16 graph with one island set, runs the
job's own loop on it (ONNX Runtime, the same code path as the commands) from the reference's noise,
and grades its images against the torch fp32 images as the assignment grades them (image MSE on the
0..255 scale, mean over the images); its cost is the graph's per-call time.

The search starts from the default set (or, when that misses the budget, from every candidate) and
shrinks it by bisection over the candidate groups (delta debugging's complement step): drop a chunk,
keep the drop if the images stay within budget, halve the chunk when no drop of that size passes.
A set that passes and from which no single island can be dropped is the result. Every trial (its
islands, image MSE, per-call time) goes into the report.

How far to trust the CPU: ONNX Runtime's CPU provider has few fp16 kernels and computes most fp16
nodes in fp32 between Casts, so a CPU trial sees fp16 *rounding* of every tensor, not fp16
*arithmetic* (accumulation, overflow inside a reduction). An island that only protects arithmetic
(a GroupNorm's statistics, a softmax's sum) looks free to drop here. The report therefore says which
default islands the search dropped, and measures the gap once: the exported fp16 module run by
torch's CPU fp16 kernels against the ORT fp16 graph of the same islands.
"""
import math
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from hw2rt.bench.measure import side_by_side
from hw2rt.engines import OrtEngine, TorchEngine
from hw2rt.engines.torch import fp32_islands
from hw2rt.export import export_onnx, to_fp16
from hw2rt.io import mse_255
from hw2rt.models import get_spec
from hw2rt.verify.parity import BUDGETS, compare_outputs, sample_images, start_noise

# The loop a search grades, per model: what the demo and the jobs run (faces: Problem 2's DDIM;
# digits: the demo's guided DDIM, eta 1, w 2), at the size of the search (faces 64x64).
SEARCH_LOOPS = {
    "face_unet": {"loop": "face-ddim", "steps": 50, "eta": 0.0, "images": 8,
                  "dims": {"height": 64, "width": 64}},
    "digit_unet": {"loop": "digit-ddim", "steps": 50, "eta": 1.0, "images": 20, "dims": {}},
}
EXTRA_CANDIDATES = {
    "face_unet": ("out.2",),
    "digit_unet": ("timeembed1", "timeembed2", "contextembed1", "contextembed2", "out.3"),
}
# parity's budgets: a trial passes when its engine would pass `hw2rt parity` (per call and images)
PRECISIONS = ("fp16", "bf16")
W = 2.0


def default_islands(net, model: str, precision: str = "fp16") -> list:
    """The islands the default conversion uses: fp16, the exported graph's (module islands, then the
    softmax sites it hit); bf16, the torch backend's (`fp32_islands`)."""
    if precision == "bf16":
        return list(fp32_islands(model, precision))
    spec = get_spec(model)
    half = to_fp16(net)
    feeds = spec.example_inputs(1, seed=0, **spec.default_dims)
    with torch.no_grad():
        half(*(feeds[s.name] for s in spec.inputs))
    return half.islands()


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-adds of one call of a layer per image (Conv2d, Linear; a norm's are its elements)."""
    per_image = out[0].numel()
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1]
        return per_image * module.in_channels // module.groups * k
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return per_image


def weight_groups(net, model: str, dims: dict) -> dict:
    """The bf16 search's candidates: {label: [module names]}, most multiply-adds first (at `dims`).

    Every module that owns weights is in one group: a top-level module whose output has no feature map
    (a timestep MLP) or that is a single layer is its own group, named by its name; every other layer
    joins the group of its role (its name below the top-level block, "*.resblocks.conv1") and the size
    of its output ("64x64"; none for a vector)."""
    spec = get_spec(model)
    feeds = spec.example_inputs(1, seed=0, **{**spec.default_dims, **dims})

    def owns(m):
        return any(True for _ in m.parameters(recurse=False))

    top = dict(net.named_children())
    outputs, hooks = {}, []

    def record(name):
        def hook(mod, _args, out):
            outputs.setdefault(name, (mod, out))  # the first call's
        return hook

    for name, m in net.named_modules():
        if name in top or (name and owns(m)):
            hooks.append(m.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            net.eval()(*(feeds[s.name] for s in spec.inputs))
    finally:
        for h in hooks:
            h.remove()
    units = {n for n, m in top.items() if n in outputs and (owns(m) or outputs[n][1].dim() != 4)}
    groups, cost = {}, {}
    for name, (m, out) in outputs.items():
        if not owns(m):
            continue  # a block: its layers are grouped
        first, _, rest = name.partition(".")
        if first in units:
            label, member = first, first
        else:
            size = f" {out.shape[-2]}x{out.shape[-1]}" if out.dim() == 4 else ""
            label, member = f"*.{rest}{size}", name
        members = groups.setdefault(label, [])
        if member not in members:
            members.append(member)
        cost[label] = cost.get(label, 0) + _macs(m, out)
    return dict(sorted(groups.items(), key=lambda kv: -cost[kv[0]]))


def _setup(model: str, images, steps, dims) -> dict:
    if model not in SEARCH_LOOPS:
        raise ValueError(f"the island search grades a sampler's images: face_unet or digit_unet, not {model}")
    setup = dict(SEARCH_LOOPS[model])
    setup.update({k: v for k, v in (("images", images), ("steps", steps), ("dims", dims)) if v})
    return setup


def loop_images(engine, setup: dict, x_T, seed: int) -> list:
    return sample_images(engine, setup["loop"], x_T, steps=setup["steps"], seed=seed, w=W, eta=setup["eta"])


class Trials:
    """Runs and remembers trials: an island set -> its engine's image MSE and per-call time (fp16: the
    exported graph on ORT; bf16: the torch backend's module), timed side by side with the fp32 reference."""

    def __init__(self, net, model: str, setup: dict, workdir: Path, *, x_T, reference_images, seed: int,
                 threads, budget: float, log, precision: str = "fp16"):
        spec = get_spec(model)
        self.net, self.model, self.setup, self.workdir = net, model, setup, workdir
        self.x_T, self.reference_images, self.seed, self.threads = x_T, reference_images, seed, threads
        self.budget, self.log, self.precision = budget, log, precision
        self.per_call_budget = BUDGETS[precision]["per_call_rel_max_abs"]
        self.timing_feeds = spec.example_inputs(len(x_T), seed=1, **{**spec.default_dims, **setup["dims"]})
        self.reference = TorchEngine(net, model, threads=threads)
        self.reference_outputs = self.reference.run(self.timing_feeds)
        self.records = []

    def images(self, engine) -> list:
        return loop_images(engine, self.setup, self.x_T, self.seed)

    def grade(self, images) -> tuple[float, float]:
        mses = [mse_255(a, b) for a, b in zip(images, self.reference_images, strict=True)]
        return sum(mses) / len(mses), max(mses)

    def engine(self, islands: list):
        """The engine of one trial: what the commands would run with these islands."""
        if self.precision == "bf16":
            return TorchEngine(self.net, self.model, precision="bf16", islands=islands, threads=self.threads)
        path = self.workdir / "trial.onnx"
        export_onnx(self.net, self.model, path, precision="fp16", islands=islands)
        return OrtEngine(path, model=self.model, threads=self.threads)

    def __call__(self, islands: list, why: str) -> dict:
        for r in self.records:
            if set(r["islands"]) == set(islands):
                return r
        t0 = time.perf_counter()
        engine = self.engine(islands)
        try:
            mean, worst = self.grade(self.images(engine))
            times = side_by_side({"call": lambda: engine.run(self.timing_feeds),
                                  "fp32": lambda: self.reference.run(self.timing_feeds)}, 5, engine.device)
            stats = compare_outputs(self.reference_outputs, engine.run(self.timing_feeds),
                                    self.per_call_budget)
        finally:
            engine.close()
        rel = max(s["required_rtol"] for s in stats.values())
        record = {"trial": len(self.records), "why": why, "fp32_islands": len(islands),
                  "islands": list(islands),
                  "image_mse_255": mean, "max_image_mse_255": worst, "per_call_rel": rel,
                  "per_call_ms": times["call"]["median_ms"], "fp32_ms": times["fp32"]["median_ms"],
                  "passed": (math.isfinite(mean) and mean <= self.budget
                             and all(s["passed"] for s in stats.values())),
                  "seconds": time.perf_counter() - t0}
        self.records.append(record)
        self.log(f"trial {record['trial']:3d} ({why}): {len(islands)} fp32 islands, image MSE {mean:.4g}, "
                 f"per call rel {rel:.3g}, {record['per_call_ms']:.2f} ms/call "
                 f"(fp32 {record['fp32_ms']:.2f}): "
                 f"{'ok' if record['passed'] else 'over budget'}")
        return record


def shrink(islands: list, passes) -> list:
    """The complement step of delta debugging: drop chunks of `islands` while `passes(rest)` holds,
    halving the chunk when no drop of its size passes, down to single islands."""
    keep = list(islands)
    chunk = max(1, math.ceil(len(keep) / 2))
    while keep:
        i = 0
        while i < len(keep):
            rest = keep[:i] + keep[i + chunk:]
            if passes(rest):
                keep = rest
            else:
                i += chunk
        if chunk == 1:
            break
        chunk = math.ceil(chunk / 2)
    return keep


def search_islands(model: str, net, out_path=None, *, precision: str = "fp16", threads: int | None = 1,
                   budget: float | None = None, images: int | None = None, steps: int | None = None,
                   dims: dict | None = None, seed: int = 0, source_sha256: str | None = None,
                   log=print) -> dict:
    """Search the fp32 islands of `net` (a face or digit UNet; SEARCH_LOOPS says how it is graded,
    `images`, `steps`, `dims` override) in `precision` (fp16 or bf16) against `budget` (default: parity's
    image budget of that precision) and return the report: every trial, the chosen islands, and (fp16)
    the CPU fidelity check. fp16 writes the chosen graph to `out_path`; bf16 writes nothing (its islands
    are module names for `engines/torch.FP32_ISLANDS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"the island search is for {' or '.join(PRECISIONS)}, not {precision}")
    if precision == "fp16" and out_path is None:
        raise ValueError("the fp16 search writes the chosen graph: give out_path")
    budget = budget or BUDGETS[precision]["e2e_image_mse_255"]
    setup = _setup(model, images, steps, dims)
    t0 = time.perf_counter()
    x_T = start_noise(model, setup["images"], seed, setup["dims"])
    with tempfile.TemporaryDirectory(prefix="hw2rt-islands-") as tmp:
        reference_images = loop_images(TorchEngine(net, model), setup, x_T, seed)
        trials = Trials(net, model, setup, Path(tmp), x_T=x_T, reference_images=reference_images, seed=seed,
                        threads=threads, budget=budget, log=log, precision=precision)
        defaults = default_islands(net, model, precision)
        if precision == "bf16":
            groups = weight_groups(net, model, setup["dims"])
        else:
            groups = {c: [c] for c in defaults + [c for c in EXTRA_CANDIDATES[model] if c not in defaults]}
        candidates = list(groups)

        def names(chosen):
            return [n for c in chosen for n in groups[c]]

        # the default islands as candidates, when they are exactly a union of groups
        as_groups = [c for c in candidates if set(groups[c]) <= set(defaults)]
        none, default = trials([], "no islands"), trials(defaults, "the default islands")
        if none["passed"]:
            chosen = []
        else:
            start = as_groups if default["passed"] and set(names(as_groups)) == set(defaults) else candidates
            if start is candidates and not trials(names(candidates), "every candidate")["passed"]:
                chosen = candidates  # nothing among the candidates meets the budget: the safest set
            else:
                chosen = shrink(start, lambda rest: trials(names(rest), "drop")["passed"])
        best = trials(names(chosen), "chosen")
        note = (f"image MSE {best['image_mse_255']:.4g} <= {budget:g}" if best["passed"]
                else f"no candidate set met the budget {budget:g}")
        fidelity = None
        if precision == "fp16":
            export_onnx(net, model, out_path, precision="fp16", islands=chosen, source_sha256=source_sha256,
                        metadata={"island_search": note})
            fidelity = cpu_fidelity(net, model, trials, chosen, out_path)
    islands = names(chosen)
    return {
        "model": model, "precision": precision, "config": getattr(net, "config", {}), **setup,
        "w": None if model == "face_unet" else W,
        "seed": seed, "threads": threads, "budget_image_mse_255": budget, "candidates": candidates,
        "groups": groups if precision == "bf16" else None,
        "default_islands": defaults, "chosen": chosen, "islands": islands, "met_budget": best["passed"],
        "note": note, "dropped_defaults": [d for d in defaults if d not in islands],
        "added": [c for c in islands if c not in defaults], "chosen_trial": best, "trials": trials.records,
        "cpu_fidelity": fidelity, "out": None if out_path is None else str(out_path),
        "seconds": time.perf_counter() - t0,
    }


def cpu_fidelity(net, model: str, trials: Trials, islands: list, graph) -> dict:
    """The fp16 module exported as `graph` (with `islands`) run by torch's CPU fp16 kernels: its image
    MSE against the fp32 images, beside the ORT graph's, and the two fp16 runs' per-call gap."""
    half = to_fp16(net, islands)  # fp32 in, fp32 out: TorchEngine runs it as it is
    torch_fp16 = TorchEngine(half, model)
    mean, worst = trials.grade(trials.images(torch_fp16))
    ort_fp16 = OrtEngine(graph, model=model, threads=trials.threads)
    try:
        feeds, ref = trials.timing_feeds, trials.reference_outputs
        out_ort, out_torch = ort_fp16.run(feeds), torch_fp16.run(feeds)
    finally:
        ort_fp16.close()
    pairs = {"ort_fp16_vs_fp32": (ref, out_ort), "torch_fp16_vs_fp32": (ref, out_torch),
             "ort_fp16_vs_torch_fp16": (out_torch, out_ort)}
    rel = {name: max(s["required_rtol"] for s in compare_outputs(a, b, 1.0).values())
           for name, (a, b) in pairs.items()}
    ort_mse = next(r["image_mse_255"] for r in trials.records if set(r["islands"]) == set(islands))
    return {"islands": list(islands), "torch_fp16_image_mse_255": mean, "torch_fp16_max_image_mse_255": worst,
            "ort_fp16_image_mse_255": ort_mse, "per_call_rel_max_abs": rel,
            "note": "torch's CPU fp16 kernels and ORT's CPU fp16 (fp32 compute between Casts) stand in for a "
                    "GPU's fp16 arithmetic; neither overflows inside a reduction as an fp16 kernel may"}


def format_search(report: dict) -> str:
    """A readable summary of a search report."""
    fid = report["cpu_fidelity"]
    dims = f", {report['dims']}" if report["dims"] else ""
    lines = [(f"island search {report['model']} {report.get('precision', 'fp16')}: {report['loop']} "
              f"{report['steps']} steps, {report['images']} images{dims}, budget image MSE "
              f"{report['budget_image_mse_255']:g}: {len(report['trials'])} trials in "
              f"{report['seconds']:.0f} s"),
             "| trial | why | fp32 islands | image MSE | per call rel | ms/call | fp32 ms/call | |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["trials"]:
        lines.append(f"| {r['trial']} | {r['why']} | {r['fp32_islands']} | {r['image_mse_255']:.4g} | "
                     f"{r['per_call_rel']:.3g} | {r['per_call_ms']:.2f} | {r['fp32_ms']:.2f} | "
                     f"{'ok' if r['passed'] else 'over'} |")
    chosen = report["chosen"]
    lines.append(f"chosen: {len(chosen)} candidates, {len(report['islands'])} fp32 islands {chosen} "
                 f"({report['note']}); dropped {len(report['dropped_defaults'])} of "
                 f"{len(report['default_islands'])} default islands, added {len(report['added'])}")
    if report.get("precision") == "bf16":
        lines.append(f"islands (engines/torch.py FP32_ISLANDS['bf16']['{report['model']}']): "
                     f"{report['islands']}")
    if fid is not None:
        gaps = ", ".join(f"{k} {v:.3g}" for k, v in fid["per_call_rel_max_abs"].items())
        lines.append(f"CPU fidelity (chosen islands): image MSE ORT fp16 "
                     f"{fid['ort_fp16_image_mse_255']:.4g}, torch fp16 "
                     f"{fid['torch_fp16_image_mse_255']:.4g}; per call rel max abs {gaps}")
    if report["out"]:
        lines.append(f"graph: {report['out']}")
    return "\n".join(lines)
