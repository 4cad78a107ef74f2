"""The suites, and the one way they run.

    cpu        `make bench`: the assignment's networks at CPU sizes, every CPU runner (~10 min, 1 thread)
    quick      tiny models, every scenario, in well under a minute (the tests run it)
    gpu        `benchmarks/gpu_check.sh` on a lent GPU: the jobs at the assignment's sizes (10 faces at
               256x256 x 50 DDIM steps, 1000 digits x 1000 guided DDPM steps), every GPU runner, CUDA
               graphs on and off, under a time budget
    cpu-smoke  the gpu suite's scenarios at tiny sizes on the CPU (`gpu_check.sh --cpu-smoke`)

`run_bench` runs a suite section by section; a section that fails is recorded and the next one runs,
one that would not fit the time budget is skipped and says so, and the JSON is rewritten after every
section, so a killed run still leaves what it measured. Weights are seeded random models (speed does
not depend on training); the diffusion models are damped (`parity.random_model`) so that their
trajectories are not chaotic and end-to-end parity means something.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial

import torch

from hw2rt.bench.gpu_checks import run_checks
from hw2rt.bench.loops import Loop, digit_loop_fns, face_loop_fns, loop_scenario
from hw2rt.bench.measure import environment, measure_peak, strict_fp32
from hw2rt.bench.report import fastest, goals, write_json
from hw2rt.bench.runners import (
    DIFFUSERS,
    REFERENCE,
    RUNNERS,
    compute_precision,
    is_cuda,
    open_runner,
    unavailable,
)
from hw2rt.bench.scenarios import dann_folder_scenario, growth_scenario, sweep
from hw2rt.errors import Hw2rtError, first_line
from hw2rt.runtime.jobs import FAST_ETA, FAST_SAMPLER, FAST_STEPS
from hw2rt.verify.parity import random_model

SCHEMA = "hw2rt.bench/2"
SUITES = ("cpu", "quick", "gpu", "cpu-smoke")
MODELS = ("digit_unet", "face_unet", "dann", "digit_classifier")


@dataclass
class Case:
    """One network in the per-call sweep."""

    model: str
    config: dict
    dims: dict = field(default_factory=dict)
    batches: tuple = (1,)
    compile_batches: tuple | None = None  # torch.compile (dict options) specialises per shape: where
    skip: dict = field(default_factory=dict)  # runner -> why this network is not measured with it


@dataclass
class Suite:
    name: str
    device: str
    cases: list
    backends: list
    digit_loops: tuple = ()  # the digit job's loops (a Loop per sampler), on the digit_unet case
    face_loop: Loop | None = None  # the face job's loop, at the face case's dims
    dann_images: int | None = None  # PNGs in the classified folder
    growth: dict | None = None  # {"images": [...], "base_steps", "steps": [...], "steps_images"}
    # the digit job on 1 process vs one per GPU (CPU: 2 processes) under torchrun: {"per_digit", "steps"}
    sharded_digits: dict | None = None
    goals: tuple = ()  # names in report.GOALS
    threads: int | None = 1
    budget_s: float | None = None
    point_s: float = 2.5  # seconds of timed calls aimed at per (runner, batch)
    min_repeats: int = 3
    max_repeats: int = 15
    loop_repeats: int = 3  # the DANN folder's
    max_point_s: float = 60.0  # a runner predicted to need longer for one point is skipped there
    slow_factor: float = 3.0  # end to end, runners this much slower per call than torch eager are skipped
    loop_skip: dict = field(default_factory=dict)  # runner -> why it is left out of the end-to-end runs
    peak_budget_s: float = 0.25  # the peak ladders stop at the first size whose call takes this long
    # each network's end-to-end job before its per-call sweep (the cases in order, headline first),
    # so that a tight budget runs out on the secondary figures, not on the jobs
    loops_first: bool = False
    checks: bool = False  # the device checks (bench/gpu_checks.py): graphs vs eager, TensorRT vs torch


# A cold torch.compile of the 113.7M-parameter face UNet takes ~4 min on the 2-core CPU, for a
# 1.06x speed-up when measured (RESULTS.md): the full CPU suite leaves it out to stay within 10 minutes.
FACE_COMPILE_SKIP = ("left out of the full CPU suite (a cold compile of this UNet takes ~4 min; cached "
                     "after, engines/compiled.py); `hw2rt bench --model face_unet` measures it")
INT8_DANN_SKIP = ("int8 calibrates the DANN on target-domain images (none in a synthetic benchmark); "
                  "memory-bound, it gained nothing from int8 in the planning probe")
COMPILE_ONLY_DIGITS = "compiled for the digit UNet only (one compile per shape takes about a minute)"
LAYOUT_FACE_ONLY = "the other activation layout is measured on the face UNet (GroupNorm-heavy) only"
# The loops run each engine the way the jobs do (behind graphs); the others are measured per call:
# torch.compile(dynamic=False) would recompile for every bucket and parity batch inside the budget.
GPU_LOOP_SKIP = {"torch+graphs": "fp32 behind graphs: per call only (the loops' fp32 reference is eager)",
                 "fp16": "without graphs: per call only (the loops run fp16 behind graphs, as the jobs do)",
                 "trt": "without graphs: per call only (the loops run it behind graphs, as the jobs do)",
                 "fp16-compile+graphs": "per call only: torch.compile(dynamic=False) recompiles for every "
                                        "bucket and parity batch"}
FAST = "digit_fast_loop"  # the digit job's few-step setting (jobs.FAST_*): the scripts' loop
CPU_GOALS = ("digit_loop_2x", "digit_loop_2x_int8", "face_peak_85", "peer_1_2x")
GPU_GOALS = ("face_job_1s", "digit_job_15s", "digit_fast_job_1s", "fp16_image_mse", "graphs_faster")


def _suite(name: str) -> Suite:
    if name == "quick":  # tiny models: the whole pipeline in well under a minute
        return Suite("quick", "cpu",
                     [Case("digit_unet", {"n_feat": 16}, {}, (1, 4), (4,)),
                      Case("face_unet", {"base": 32}, {"height": 32, "width": 32}, (2,), (2,)),
                      Case("dann", {}, {}, (1, 32), (32,))],
                     ["torch", "bf16", "ort"],
                     digit_loops=(Loop(2, 4, repeats=2),
                                  Loop(2, FAST_STEPS, FAST_SAMPLER, FAST_ETA, repeats=2, scenario=FAST)),
                     face_loop=Loop(2, 2, repeats=2), dann_images=64,
                     growth={"images": [1, 2], "base_steps": 2, "steps": [2, 4], "steps_images": 1},
                     goals=CPU_GOALS, point_s=0.3, max_repeats=5, loop_repeats=2, max_point_s=10,
                     slow_factor=1e9, peak_budget_s=0.05)
    if name == "cpu":  # the sizes, fitted to ~10 minutes on one core
        return Suite("cpu", "cpu",
                     [Case("digit_unet", {"n_feat": 128}, {}, (1, 4, 20), (20,)),
                      Case("face_unet", {"base": 128}, {"height": 64, "width": 64}, (1, 4), (4,),
                           skip={"compile": FACE_COMPILE_SKIP, "bf16-compiled": FACE_COMPILE_SKIP}),
                      Case("dann", {}, {}, (1, 64, 512), (512,),
                           skip={"ort-int8": INT8_DANN_SKIP, "openvino-int8": INT8_DANN_SKIP})],
                     ["torch", "compile", "bf16", "bf16-compiled", "ort", "ort-fp16", "ort-int8", "openvino",
                      "openvino-bf16", "openvino-int8", "openvino-default"],
                     digit_loops=(Loop(10, 5), Loop(10, FAST_STEPS, FAST_SAMPLER, FAST_ETA, scenario=FAST)),
                     face_loop=Loop(4, 2), dann_images=2048,
                     growth={"images": [1, 2, 5, 10], "base_steps": 5, "steps": [10, 30, 50],
                             "steps_images": 1},
                     goals=CPU_GOALS, max_point_s=30,
                     loop_skip={"ort-fp16": "on the CPU the fp16 graph computes in fp32 (cast insertion): "
                                            "per call only"})
    compiled = {"fp16-compile+graphs": COMPILE_ONLY_DIGITS}
    if name == "gpu":  # the assignment's jobs on one GPU, under the budget of a lent machine, headline first
        face_only = {**compiled, "fp16-cl+graphs": LAYOUT_FACE_ONLY}
        return Suite("gpu", "cuda",
                     [Case("face_unet", {"base": 128}, {"height": 256, "width": 256}, (1, 4, 10),
                           skip=compiled),
                      Case("digit_unet", {"n_feat": 128}, {}, (1, 20, 64, 200, 500, 2000), (500,),
                           skip={"fp16-cl+graphs": LAYOUT_FACE_ONLY}),
                      Case("dann", {}, {}, (64, 2048), skip=face_only),
                      Case("digit_classifier", {}, {}, (64, 2048), skip=face_only)],
                     ["torch", "auto", "torch+graphs", "fp16", "fp16+graphs", "fp16-cl+graphs", "bf16+graphs",
                      "ort-fp16", "trt", "trt+graphs", "fp16-compile+graphs"],
                     digit_loops=(Loop(1000, 1000, sampler="ancestral", repeats=1, cap_s=30,
                                       max_steps={"torch": 200}, parity_images=50),
                                  Loop(1000, FAST_STEPS, FAST_SAMPLER, FAST_ETA, repeats=3, scenario=FAST)),
                     face_loop=Loop(10, 50, repeats=3), dann_images=10000, goals=GPU_GOALS, threads=None,
                     sharded_digits={"per_digit": 100, "steps": 50}, loop_skip=GPU_LOOP_SKIP,
                     loops_first=True, checks=True,
                     budget_s=420, point_s=1.0, max_repeats=50, max_point_s=20, slow_factor=1e9)
    if name == "cpu-smoke":  # the gpu suite's code paths at tiny sizes, on the CPU
        nchw = {"bf16-nchw+graphs": LAYOUT_FACE_ONLY}
        return Suite("cpu-smoke", "cpu",
                     [Case("face_unet", {"base": 32, "norm_groups": 8}, {"height": 32, "width": 32}, (2,)),
                      Case("digit_unet", {"n_feat": 16}, {}, (1, 3, 8), skip=nchw),
                      Case("dann", {}, {}, (8,), skip=nchw),
                      Case("digit_classifier", {}, {}, (8,), skip=nchw)],
                     ["torch", "auto", "bf16+graphs", "bf16-nchw+graphs", "ort-fp16", "trt+graphs"],
                     digit_loops=(Loop(20, 12, sampler="ancestral", repeats=1, cap_s=60,
                                       max_steps={"torch": 6}, parity_images=10),
                                  Loop(20, FAST_STEPS, FAST_SAMPLER, FAST_ETA, repeats=1, scenario=FAST)),
                     face_loop=Loop(2, 4, repeats=1), dann_images=64, goals=GPU_GOALS, budget_s=110,
                     point_s=0.2, max_repeats=3, loop_repeats=1, max_point_s=10, slow_factor=1e9,
                     peak_budget_s=0.05, sharded_digits={"per_digit": 1, "steps": 2, "batch_size": 4},
                     loops_first=True, checks=True)
    raise Hw2rtError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")


def make_suite(name: str = "cpu", *, model: str | None = None, batches: list | None = None,
               backends: list | None = None) -> Suite:
    """Suite `name`, narrowed to one network, other batch sizes or other runners."""
    s = _suite(name)
    if model is not None:
        if model not in MODELS:
            raise Hw2rtError(f"unknown model {model!r}; bench covers {', '.join(MODELS)}")
        s.cases = [replace(c, skip={}) for c in s.cases if c.model == model]  # named: every runner
        s.digit_loops = s.digit_loops if model == "digit_unet" else ()
        s.growth = s.growth if model == "digit_unet" else None
        s.face_loop = s.face_loop if model == "face_unet" else None
        s.dann_images = s.dann_images if model == "dann" else None
    if batches:
        s.cases = [replace(c, batches=tuple(batches), compile_batches=None) for c in s.cases]
    if backends:
        unknown = [b for b in backends if b not in RUNNERS and b != DIFFUSERS]
        if unknown:
            raise Hw2rtError(f"unknown backend(s) {', '.join(unknown)}; "
                             f"choose from {', '.join([*RUNNERS, DIFFUSERS])}")
        s.backends = [b for b in backends if b != DIFFUSERS]
    if REFERENCE not in s.backends:
        s.backends.insert(0, REFERENCE)  # every ratio and parity figure is against torch eager
    return s


class _Run:
    """The result dict, the log, the budget; runs guarded sections and rewrites the JSON after each."""

    def __init__(self, result: dict, budget_s, json_path, log):
        self.result, self.budget_s, self.json_path, self.log = result, budget_s, json_path, log
        self.t0 = time.perf_counter()

    def left(self) -> float:
        return float("inf") if self.budget_s is None else self.budget_s - (time.perf_counter() - self.t0)

    def save(self):
        self.result["wall_s"] = time.perf_counter() - self.t0
        if self.json_path is not None:
            write_json(self.result, self.json_path)

    def section(self, name: str, fn, *, min_s: float = 0.0):
        sections = self.result["sections"]
        if self.left() < min_s:
            sections[name] = {"status": "skipped", "reason": f"{self.left():.0f} s of the budget left, "
                                                             f"the section needs ~{min_s:.0f} s"}
            self.log(f"== {name}: skipped ({sections[name]['reason']})")
        else:
            self.log(f"== {name}")
            t = time.perf_counter()
            try:
                fn()
                sections[name] = {"status": "ok"}
            except Exception as exc:  # noqa: BLE001 -- one broken section must not lose the others
                self.log(traceback.format_exc(limit=8))
                sections[name] = {"status": "error", "error": f"{type(exc).__name__}: {first_line(exc, 300)}"}
            sections[name]["seconds"] = round(time.perf_counter() - t, 2)
        self.save()


def run_bench(suite: Suite, *, threads: int | None = None, cache_dir=None, command: str | None = None,
              budget_s: float | None = None, json_path=None, log=print) -> dict:
    """Run `suite` and return the result dict (SCHEMA: the JSON that --json writes, rewritten after every
    section when `json_path` is given). `threads` and `budget_s` override the suite's."""
    device = suite.device
    if is_cuda(device):
        if not torch.cuda.is_available():
            raise Hw2rtError(f"the {suite.name} suite runs on a CUDA GPU, and torch sees none "
                             "(on a CPU: --suite cpu-smoke)")
        torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: autotuned once in the warm-up
    threads = threads or suite.threads
    if threads:
        torch.set_num_threads(threads)
    budget_s = budget_s if budget_s is not None else suite.budget_s
    result = {"schema": SCHEMA, "suite": suite.name,
              "created": datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": command, "budget_s": budget_s, "env": environment(device, threads), "runners": {},
              "peaks": {}, "per_call": [], "scenarios": [], "growth": [], "goals": [], "sections": {}}
    run = _Run(result, budget_s, json_path, log)
    log(f"# hw2rt bench, {suite.name} suite, on {result['env'].get('gpu') or result['env']['cpu']} "
        f"({device}, {result['env']['threads']} thread(s)): {', '.join(suite.backends)}")
    for name in suite.backends:
        reason = unavailable(name, device)
        result["runners"][name] = {"label": RUNNERS[name]["label"], "precision": RUNNERS[name]["precision"],
                                   "compute_precision": compute_precision(name, device),
                                   "available": reason is None, "reason": reason, "open_s": {}}
    backends = [n for n in suite.backends if result["runners"][n]["available"]]
    precisions = sorted({compute_precision(n, device) for n in backends})

    def peaks(when: str):
        for precision in precisions:
            m = measure_peak(precision, device, budget_s=suite.peak_budget_s)
            peak = result["peaks"].setdefault(precision, {})
            peak[when] = m
            # A shared machine's load drifts: fractions are against the better of start and end.
            peak.update(max((peak.get("start", m), m), key=lambda p: p["gflops"]))
            log(f"  peak {precision} ({when}): {m['gflops']:.1f} GFLOP/s ({m['best']})")

    # the fp32 reference in IEEE fp32 on a GPU (TF32 otherwise), as it was after the run; the CUDA
    # flags change nothing on a CPU, where cpu-smoke walks this path
    with strict_fp32():
        run.section("peaks at the start", lambda: peaks("start"), min_s=5)
        # the device checks right after the jobs' networks: cheap, and ahead of what a budget may skip
        jobs = [c for c in suite.cases if c.model in ("face_unet", "digit_unet")]
        for case in suite.cases:
            _run_case(run, suite, case, backends, device, threads, cache_dir)
            if suite.checks and case is (jobs or suite.cases)[-1]:
                run.section("device checks: CUDA graphs vs eager, TensorRT vs torch",
                            partial(_checks, result, device, cache_dir, log), min_s=10)
        if suite.sharded_digits:
            _sharded_section(run, suite, device)
        run.section("peaks at the end", lambda: peaks("end"), min_s=5)
    for row in result["per_call"] + result["scenarios"]:
        if row.get("achieved_gflops") is not None and row["compute_precision"] in result["peaks"]:
            row["peak_gflops"] = result["peaks"][row["compute_precision"]]["gflops"]
            row["peak_fraction"] = row["achieved_gflops"] / row["peak_gflops"]
    result["goals"] = goals(result, suite.goals)
    result["env"]["loadavg_end"] = list(os.getloadavg())
    run.save()
    return result


def _checks(result: dict, device, cache_dir, log):
    result["checks"] = run_checks(device, cache_dir)
    for name, outcome in result["checks"].items():
        log(f"  {name}: {outcome}")


def _sharded_section(run: _Run, suite: Suite, device):
    """The multi-GPU case: the digit job on one process and on one per GPU (skipped with its reason on
    one GPU); on a CPU, on 1 and 2 processes."""
    name = "the sharded digit job (torchrun)"
    gpus = torch.cuda.device_count() if is_cuda(device) else 0
    if is_cuda(device) and gpus < 2:
        run.result["sections"][name] = {"status": "skipped",
                                        "reason": f"{gpus} GPU: the multi-GPU case needs 2 or more"}
        run.log(f"== {name}: skipped ({run.result['sections'][name]['reason']})")
        run.save()
        return
    from hw2rt.bench.sharded import sharded_digit_job

    def sharded():
        run.result["sharded"] = sharded_digit_job([1, gpus or 2], device="cuda" if gpus else "cpu",
                                                  threads=None if gpus else 1, log=run.log,
                                                  **suite.sharded_digits)

    run.section(name, sharded, min_s=30)


def _run_case(run: _Run, suite: Suite, case: Case, backends: list, device, threads, cache_dir):
    """One network: its runners opened, then the per-call sweep and its end-to-end scenarios (the job
    first where `suite.loops_first`)."""
    result, log = run.result, run.log
    # On the CPU: the engines export it (traced with CPU inputs) or copy it to the device themselves.
    net = random_model(case.model, case.config, seed=0)
    engines = {}

    def open_all():
        for name in backends:
            if name in case.skip:  # the sweep reports why
                engines[name] = case.skip[name]
                continue
            t0 = time.perf_counter()
            try:
                engines[name] = open_runner(name, case.model, net, device=device, threads=threads,
                                            cache_dir=cache_dir, dims=case.dims)
                result["runners"][name]["open_s"][case.model] = time.perf_counter() - t0
                result["runners"][name].setdefault("opened", {})[case.model] = engines[name].name
            except Exception as exc:  # noqa: BLE001 -- a runner that cannot open is its rows' reason
                engines[name] = f"could not open: {type(exc).__name__}: {first_line(exc, 200)}"

    def per_call():
        log(f"{case.model} {case.config} {case.dims or ''}: per call")
        result["per_call"].extend(sweep(case, engines, suite, device=device, peaks=result["peaks"], log=log))

    run.section(f"{case.model}: open the runners", open_all, min_s=10)
    live = {n: e for n, e in engines.items() if not isinstance(e, str)}
    sections = [(f"{case.model}: per call", per_call, 20)]
    loops = _loop_sections(run, suite, case, net, live, device)
    sections = loops + sections if suite.loops_first else sections + loops
    for name, fn, min_s in sections:
        run.section(name, fn, min_s=min_s)
    for e in live.values():
        e.close()
    if is_cuda(device):
        torch.cuda.empty_cache()


def _loop_sections(run: _Run, suite: Suite, case: Case, net, live: dict, device) -> list:
    """(section name, function, seconds it needs) of `case`'s end-to-end scenarios."""
    result, log = run.result, run.log
    out = []

    def rows():
        return [r for r in result["per_call"] if r["model"] == case.model]

    def loop_section(scenario, loop, make):
        def fn():
            result["scenarios"] += loop_scenario(scenario, case, live, make(), rows(), loop=loop, suite=suite,
                                                 device=device, peaks=result["peaks"], log=log)
        return fn

    if case.model == "face_unet" and suite.face_loop:
        make = partial(face_loop_fns, live, net, suite.face_loop, case.dims, device)
        out.append(("face_unet: the face job's DDIM loop",
                    loop_section("face_ddim_loop", suite.face_loop, make), 30))
    for loop in suite.digit_loops if case.model == "digit_unet" else ():
        make = partial(digit_loop_fns, live, net, loop, device)
        name = loop.scenario or f"digit_{loop.sampler}_loop"
        out.append((f"digit_unet: the digit job's loop ({loop.sampler}, {loop.steps} steps)",
                    loop_section(name, loop, make), 30))
    if case.model == "dann" and suite.dann_images:
        def dann():
            result["scenarios"] += dann_folder_scenario(live, rows(), suite.dann_images, suite, device, log)

        out.append(("dann: classify a folder", dann, 10))
    if case.model == "digit_unet" and suite.growth:
        def growth():
            loop_rows = [s for s in result["scenarios"] if s["scenario"] == "digit_ddim_loop"]
            best = fastest(loop_rows, exclude=(REFERENCE, DIFFUSERS, "compile", "bf16-compiled"))
            chosen = {n: live[n] for n in (REFERENCE, best) if n in live}
            result["growth"] += growth_scenario(chosen, net, suite.growth, device, log)

        out.append(("digit_unet: cost growth", growth, 20))
    return out
