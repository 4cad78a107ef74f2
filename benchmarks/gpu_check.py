"""One GPU check for a lent machine: parity, CUDA graphs and the two HW2 jobs on every GPU backend.

    PYTHONPATH=. python3 benchmarks/gpu_check.py                # on a CUDA machine (< 8 min)
    PYTHONPATH=. python3 benchmarks/gpu_check.py --cpu-smoke    # tiny sizes on the CPU (< 2 min)

Writes `gpu_check.json` and `gpu_check.log` to --out (default: $OUT, else outputs/gpu_check) and
prints a short table. Every section is guarded: an error is recorded and the next section runs;
a section that would not fit the time budget is skipped and says so. The JSON is rewritten after
every section, so a killed run still leaves what it measured.

Backends, each `open_engine` with the settings in OPEN (skipped, with the reason, where it cannot run):
    torch-fp32          the reference: eager torch, IEEE fp32 (TF32 off)
    torch-fp16          the torch backend's fp16 module (engines/torch.py islands), eager
    torch-fp16+graphs   the same behind per-bucket CUDA graphs (engines/graphs.py): what the commands run
    torch-bf16+graphs   the same in bf16
    torch-fp16-compiled+graphs   torch-fp16+graphs through torch.compile (digit job only, budget allowing)
    ort-cuda-fp16       ONNX Runtime CUDA EP on the fp16 graph (needs onnxruntime-gpu)
    trt-fp16+graphs     native TensorRT plan of the fp16 graph, CUDA graphs (needs tensorrt)
The jobs run through the jobs' own loops (hw2rt.runtime.jobs.sample_faces / sample_digits).
Random weights, seeded; the diffusion models' last conv is damped (hw2rt.parity.random_model, DAMP)
so that a long trajectory measures the engine and not the chaos of a random network.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from hw2rt.engines import GraphedEngine, open_engine
from hw2rt.engines.ort import available_providers
from hw2rt.io import mse_255, to_uint8_minmax, to_uint8_signed
from hw2rt.models import get_spec
from hw2rt.parity import BUDGETS, DAMP, LAST_CONV, compare_outputs, random_model
from hw2rt.runtime.jobs import digit_plan, sample_digits, sample_faces

MODELS = ("face_unet", "digit_unet", "dann", "digit_classifier")
CLASSIFIERS = ("dann", "digit_classifier")
# backend name -> open_engine settings
OPEN = {
    "torch-fp32": {"backend": "torch", "precision": "fp32", "graphs": False},
    "torch-fp16": {"backend": "torch", "precision": "fp16", "graphs": False},
    "torch-fp16+graphs": {"backend": "torch", "precision": "fp16", "graphs": True},
    "torch-bf16+graphs": {"backend": "torch", "precision": "bf16", "graphs": True},
    "torch-fp16-compiled+graphs": {"backend": "torch", "precision": "fp16", "graphs": True,
                                   "compile": {"dynamic": False}},
    "ort-cuda-fp16": {"backend": "ort", "precision": "fp16", "graphs": False},
    "ort-cpu-fp16": {"backend": "ort", "precision": "fp16", "graphs": False},
    "trt-fp16+graphs": {"backend": "trt", "precision": "fp16", "graphs": True},
}
GPU_BACKENDS = ("torch-fp32", "torch-fp16", "torch-fp16+graphs", "torch-bf16+graphs", "ort-cuda-fp16",
                "trt-fp16+graphs", "torch-fp16-compiled+graphs")
# Backends run in some sections only: torch.compile compiles once per input shape (~1 min each),
# so the compiled variant runs the digit job alone (one shape), last, when the budget allows.
ONLY_IN = {"torch-fp16-compiled+graphs": ("digit_job",)}
MIN_LEFT_S = {"torch-fp16-compiled+graphs": 150.0}
CPU_BACKENDS = ("torch-fp32", "torch-bf16+graphs", "ort-cpu-fp16", "trt-fp16+graphs")
REFERENCE = "torch-fp32"

# Sizes: the real jobs on a GPU; tiny ones for the CPU smoke run.
SETTINGS = {
    "gpu": {
        "face": {"config": {}, "dims": {"height": 256, "width": 256}, "images": 10, "steps": 50},
        "digit": {"config": {"n_feat": 128}, "images": 1000, "T": 1000, "w": 2.0, "subset": 50,
                  "cap_s": 45.0, "fp32_cap_s": 25.0, "fp32_max_steps": 300, "reserve_s": 45.0},
        "parity_batch": {"face_unet": 2, "digit_unet": 8, "dann": 64, "digit_classifier": 64},
        "graph_batches": [1, 20, 64, 200], "graph_iters": {1: 60, 20: 60, 64: 40, 200: 20},
        "classifier_images": 2000, "budget_s": 420.0,
    },
    "cpu-smoke": {
        "face": {"config": {"base": 32, "norm_groups": 8}, "dims": {"height": 32, "width": 32}, "images": 2,
                 "steps": 4},
        "digit": {"config": {"n_feat": 16}, "images": 20, "T": 12, "w": 2.0, "subset": 10,
                  "cap_s": 20.0, "fp32_cap_s": 10.0, "fp32_max_steps": 6, "reserve_s": 10.0},
        "parity_batch": {"face_unet": 2, "digit_unet": 4, "dann": 8, "digit_classifier": 8},
        "graph_batches": [1, 3, 8], "graph_iters": {1: 3, 3: 3, 8: 3},
        "classifier_images": 64, "budget_s": 110.0,
    },
}
DAMPED = {m: f"{LAST_CONV[m]} x {DAMP[m]}" for m in LAST_CONV}


class Unavailable(Exception):
    """A backend that cannot run here (no TensorRT, no CUDA EP, ...): skipped, not an error."""


class StopEarly(Exception):
    pass


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _clean(obj):
    """JSON-safe: NaN/inf -> None, tuples -> lists, dtypes/devices/paths -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


class Check:
    """Results, log, time budget; runs guarded sections and rewrites the JSON after each."""

    def __init__(self, out_dir: Path, mode: str, budget_s: float):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.json_path = out_dir / "gpu_check.json"
        self.log_file = open(out_dir / "gpu_check.log", "w")  # noqa: SIM115 -- open for the whole run
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.results = {"mode": mode, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "budget_s": budget_s,
                        "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, msg: str = ""):
        print(msg, flush=True)
        self.log_file.write(msg + "\n")
        self.log_file.flush()

    def save(self):
        self.results["total_s"] = round(self.elapsed(), 2)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_clean(self.results), indent=2) + "\n")
        os.replace(tmp, self.json_path)

    def section(self, name: str, fn, *, min_s: float = 0.0):
        if self.left() < min_s:
            why = f"skipped: {self.left():.0f} s of the budget left, the section needs ~{min_s:.0f} s"
            self.log(f"== {name}: {why}")
            self.results["sections"][name] = {"status": "skipped", "reason": why}
            self.results[name] = {"skipped": why}
            self.save()
            return
        self.log(f"== {name} (t={self.elapsed():.0f}s, {self.left():.0f}s left)")
        t = time.perf_counter()
        try:
            self.results[name] = fn()
            status = {"status": "ok"}
        except Exception as exc:  # noqa: BLE001 -- one broken section must not lose the others
            self.log(traceback.format_exc())
            self.results.setdefault(name, {})
            if not isinstance(self.results[name], dict):
                self.results[name] = {}
            self.results[name]["error"] = _line(exc)
            status = {"status": "error", "error": _line(exc)}
        status["seconds"] = round(time.perf_counter() - t, 2)
        self.results["sections"][name] = status
        self.save()


# --- devices, timing ------------------------------------------------------------------------------

def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def strict_fp32():
    """IEEE fp32 for the reference: torch runs fp32 convolutions in TF32 by default on Ampere+."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        cudnn_conv.fp32_precision = "ieee"
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            torch.backends.cuda.matmul.fp32_precision = "ieee"
        else:
            torch.backends.cuda.matmul.allow_tf32 = False
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def peak_mib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def allocated_mib(device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else None


def time_ms(fn, iters: int, device) -> float:
    """Mean wall time of one call in ms (after two warm-up calls), the device drained at both ends."""
    for _ in range(2):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t) * 1000 / iters


# --- environment ----------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    from hw2rt.engines.trt import import_tensorrt

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available()
           else None, "cpu_threads": torch.get_num_threads()}
    for mod in ("onnx", "onnxruntime", "numpy"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 -- report, do not fail
            env[mod] = f"unavailable ({_line(exc)})"
    try:
        env["ort_providers"] = available_providers()
    except Exception as exc:  # noqa: BLE001
        env["ort_providers"] = f"unavailable ({_line(exc)})"
    try:
        env["tensorrt"] = import_tensorrt().__version__
    except Exception as exc:  # noqa: BLE001
        env["tensorrt"] = None
        env["tensorrt_status"] = str(exc)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update({"gpu": torch.cuda.get_device_name(device), "capability": f"{p.major}.{p.minor}",
                    "gpu_memory_gib": round(p.total_memory / 2**30, 1), "sm_count": p.multi_processor_count})
        if shutil.which("nvidia-smi"):
            try:
                q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm,power.limit",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
                                   check=False)
                env["nvidia_smi"] = q.stdout.strip()
                env["driver"] = q.stdout.split(",")[0].strip() if q.stdout else None
            except (OSError, subprocess.SubprocessError) as exc:
                env["nvidia_smi"] = f"failed: {_line(exc)}"
    env["fp32_reference"] = "IEEE fp32 (TF32 off for cuDNN convolutions and matmuls)" if device.type == "cuda" \
        else "CPU fp32"
    return env


# --- backends -------------------------------------------------------------------------------------

class Backends:
    """Engines per (backend, model), made on first use and kept; why a backend is unavailable."""

    def __init__(self, ctx: Check, names, nets: dict, device: torch.device, settings: dict, cache_dir: Path,
                 threads: int | None = None):
        self.ctx, self.names, self.nets, self.device, self.s = ctx, list(names), nets, device, settings
        self.cache_dir, self.threads = cache_dir, threads
        self.engines: dict = {}
        self.unavailable: dict = {}
        self.failed: dict = {}
        self.setup_s: dict = {}

    def check(self, backend: str):
        """Raise Unavailable when `backend` cannot run on this machine at all."""
        if backend in self.unavailable:
            raise Unavailable(self.unavailable[backend])
        reason = None
        cuda = self.device.type == "cuda"
        if backend.startswith("ort-cuda") and "CUDAExecutionProvider" not in available_providers():
            reason = "onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu is not installed)"
        elif backend.startswith("trt"):
            from hw2rt.engines.trt import import_tensorrt
            try:
                import_tensorrt()
            except Exception as exc:  # noqa: BLE001 -- Hw2rtError, or a broken install
                reason = str(exc)
            if reason is None and not cuda:
                reason = "TensorRT needs a CUDA GPU"
        elif backend.startswith("torch-fp16") and not cuda:
            reason = "torch fp16 runs on CUDA only"
        if reason:
            self.unavailable[backend] = reason
            raise Unavailable(reason)

    def get(self, backend: str, model: str):
        key = (backend, model)
        if key in self.engines:
            return self.engines[key]
        self.check(backend)
        if key in self.failed:  # a failed build (an export, a TensorRT plan) is not retried per section
            raise RuntimeError(f"setup failed earlier: {self.failed[key]}")
        t = time.perf_counter()
        try:
            engine = self._make(backend, model)
        except Exception as exc:
            self.failed[key] = _line(exc)
            raise
        self.setup_s[f"{backend}/{model}"] = round(time.perf_counter() - t, 2)
        self.engines[key] = engine
        return engine

    def _make(self, backend: str, model: str):
        if backend not in OPEN:
            raise ValueError(f"unknown backend {backend}")
        dims = self.s["face"]["dims"] if model == "face_unet" else None
        return open_engine(model, self.nets[model], device=self.device, dims=dims, cache_dir=self.cache_dir,
                           threads=self.threads, **OPEN[backend])

    def close(self, model: str | None = None):
        for key in [k for k in self.engines if model is None or k[1] == model]:
            with contextlib.suppress(Exception):
                self.engines.pop(key).close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def for_each_backend(bk: Backends, fn, *, section: str, include_reference=False) -> dict:
    """{backend: fn(backend)} with unavailable backends and errors recorded, never raised."""
    out = {}
    for b in bk.names:
        if b == REFERENCE and not include_reference:
            continue
        if b in ONLY_IN and section not in ONLY_IN[b]:
            out[b] = {"skipped": f"runs only in {', '.join(ONLY_IN[b])}"}
            continue
        if bk.ctx.left() < MIN_LEFT_S.get(b, 0.0):
            out[b] = {"skipped": f"budget: {bk.ctx.left():.0f} s left, needs ~{MIN_LEFT_S[b]:.0f} s"}
            continue
        try:
            out[b] = fn(b)
        except Unavailable as exc:
            out[b] = {"skipped": str(exc)}
        except Exception as exc:  # noqa: BLE001 -- recorded per backend
            bk.ctx.log(f"  {b}: {_line(exc)}")
            bk.ctx.log(traceback.format_exc(limit=6))
            out[b] = {"error": _line(exc)}
    return out


# --- sections -------------------------------------------------------------------------------------

def feeds_for(model: str, batch: int, device, settings, seed: int = 0) -> dict:
    spec = get_spec(model)
    dims = settings["face"]["dims"] if model == "face_unet" else {}
    return {k: v.to(device) for k, v in spec.example_inputs(batch, seed, **dims).items()}


def per_call_parity(bk: Backends) -> dict:
    out = {}
    for model in MODELS:
        feeds = feeds_for(model, bk.s["parity_batch"][model], bk.device, bk.s)
        ref = bk.get(REFERENCE, model).run(feeds)

        def one(b, model=model, feeds=feeds, ref=ref):
            engine = bk.get(b, model)
            budget = BUDGETS["bf16" if "bf16" in b else "fp16"]["per_call_rel_max_abs"]
            stats = compare_outputs(ref, engine.run(feeds), budget)
            res = {"outputs": stats, "passed": all(o["passed"] for o in stats.values())}
            if model in CLASSIFIERS:
                name = get_spec(model).outputs[0].name
                res["argmax_agreement"] = float((engine.run(feeds)[name].argmax(1).cpu() ==
                                                 ref[name].argmax(1).cpu()).float().mean())
            worst = max(o["required_rtol"] for o in stats.values())
            bk.ctx.log(f"  {model:17s} {b:18s} max rel err {worst:.2e} {'ok' if res['passed'] else 'FAIL'}")
            return res

        out[model] = {"batch": bk.s["parity_batch"][model],
                      "budget_rtol": {p: BUDGETS[p]["per_call_rel_max_abs"] for p in ("fp16", "bf16")},
                      "backends": for_each_backend(bk, one, section="per_call_parity")}
    return out


def cuda_graphs(bk: Backends) -> dict:
    """Digit UNet per call: the same engine with and without its CUDA graphs (CPU: buckets vs plain)."""
    model, out = "digit_unet", {}

    def one(b):
        graphed = bk.get(b, model)
        if not isinstance(graphed, GraphedEngine):
            raise Unavailable("no graphs on this backend")
        eager = graphed.engine
        rows = {}
        for batch in bk.s["graph_batches"]:
            feeds = feeds_for(model, batch, bk.device, bk.s, seed=1)
            iters = bk.s["graph_iters"][batch]
            e_ms = time_ms(lambda feeds=feeds: eager.run(feeds), iters, bk.device)
            g_ms = time_ms(lambda feeds=feeds: graphed.run(feeds), iters, bk.device)
            diff = float((eager.run(feeds)["eps"] - graphed.run(feeds)["eps"]).abs().max())
            rows[str(batch)] = {"eager_ms": e_ms, "graph_ms": g_ms, "speedup": e_ms / g_ms,
                                "max_abs_diff": diff}
            bk.ctx.log(f"  {b:18s} batch {batch:4d}: eager {e_ms:8.3f} ms  graphs {g_ms:8.3f} ms  "
                       f"x{e_ms / g_ms:.2f}")
        res = {"batches": rows, "graphs_used": graphed.device.type == "cuda" and graphed.runner.graphs,
               "graph_error": graphed.runner.graph_error}
        return res

    names = [b for b in bk.names if "+graphs" in b and "cuda_graphs" in ONLY_IN.get(b, ("cuda_graphs",))]
    for b in names:
        try:
            out[b] = one(b)
        except Unavailable as exc:
            out[b] = {"skipped": str(exc)}
        except Exception as exc:  # noqa: BLE001
            bk.ctx.log(traceback.format_exc(limit=6))
            out[b] = {"error": _line(exc)}
    # The reference precision too: graphs around the fp32 engine (no extra engine kept).
    try:
        ref = bk.get(REFERENCE, model)
        g = open_engine(model, bk.nets[model], device=bk.device, **{**OPEN[REFERENCE], "graphs": True})
        rows = {}
        for batch in bk.s["graph_batches"]:
            feeds = feeds_for(model, batch, bk.device, bk.s, seed=1)
            iters = bk.s["graph_iters"][batch]
            e_ms = time_ms(lambda feeds=feeds: ref.run(feeds), iters, bk.device)
            g_ms = time_ms(lambda feeds=feeds: g.run(feeds), iters, bk.device)
            rows[str(batch)] = {"eager_ms": e_ms, "graph_ms": g_ms, "speedup": e_ms / g_ms}
            bk.ctx.log(f"  {REFERENCE + '+graphs':18s} batch {batch:4d}: eager {e_ms:8.3f} ms  graphs {g_ms:8.3f} ms"
                       f"  x{e_ms / g_ms:.2f}")
        out[REFERENCE + "+graphs"] = {"batches": rows, "graph_error": g.runner.graph_error}
        g.runner.close()  # not g.close(): that would close the reference's module too
    except Exception as exc:  # noqa: BLE001
        out[REFERENCE + "+graphs"] = {"error": _line(exc)}
    return out


def _face_images(engine, x, steps, device) -> tuple[torch.Tensor, float]:
    sync(device)
    t = time.perf_counter()
    img = sample_faces(engine, x, steps=steps, eta=0.0, batch_size=len(x), progress=False)
    sync(device)
    return img, time.perf_counter() - t


def face_job(bk: Backends) -> dict:
    f = bk.s["face"]
    n, steps, dims = f["images"], f["steps"], f["dims"]
    x = torch.randn(n, 3, dims["height"], dims["width"], generator=torch.Generator().manual_seed(0)).to(bk.device)
    warm = {"x": x, "t": torch.full((n,), 981, dtype=torch.int64, device=bk.device)}
    res = {"images": n, "steps": steps, "size": [dims["height"], dims["width"]], "sampler": "DDIM eta=0",
           "weights": f"random FaceUNet {json.dumps(bk.nets['face_unet'].config)}, {DAMPED['face_unet']}",
           "goal_s": 1.0, "backends": {}}
    ref_pics = None

    def one(b):
        nonlocal ref_pics
        engine = bk.get(b, "face_unet")
        t = time.perf_counter()
        engine.run(warm)  # warm-up; captures the batch's CUDA graph
        sync(bk.device)
        setup = time.perf_counter() - t
        before = allocated_mib(bk.device)
        reset_peak(bk.device)
        img, secs = _face_images(engine, x, steps, bk.device)
        pics = [to_uint8_minmax(i) for i in img]
        r = {"seconds": secs, "images_per_s": n / secs, "warmup_s": setup, "peak_mib": peak_mib(bk.device),
             "resident_mib_before": before}
        if b == REFERENCE:
            ref_pics = pics
        elif ref_pics is not None:
            mses = [mse_255(a, p) for a, p in zip(ref_pics, pics)]
            r.update({"image_mse_255_vs_fp32": sum(mses) / len(mses), "max_image_mse_255": max(mses)})
        bk.ctx.log(f"  {b:18s} {secs:7.3f} s" + (f"  image MSE vs fp32 {r['image_mse_255_vs_fp32']:.4f}"
                                                   if "image_mse_255_vs_fp32" in r else ""))
        return r

    res["backends"] = for_each_backend(bk, one, section="face_job", include_reference=True)
    return res


def _digit_run(engine, *, n_all, rows, T, w, device, cap_s, max_steps=None, seed=1234):
    """The digit job's loop (`sample_digits`: the guided ancestral DDPM) for the first `rows` of an
    `n_all`-image job, in one chunk (the engine splits it into its buckets, as it splits the command's
    250-image chunks); image k's noise depends on k alone, so a subset is the same images. Stops early
    at cap_s / max_steps."""
    labels = torch.arange(n_all) % 10  # every subset holds every digit
    state = {"steps": 0}
    check_every = 20 if device.type == "cuda" else 1

    def callback(first, i, _t, _x):
        state["steps"] = i + 1
        if max_steps is not None and i + 1 >= max_steps and i + 1 < T:
            raise StopEarly
        if (i + 1) % check_every == 0 and i + 1 < T:
            sync(device)
            if time.perf_counter() - t0 > cap_s:
                raise StopEarly

    sync(device)
    t0 = time.perf_counter()
    try:
        img = sample_digits(engine, labels[:rows], digit_plan("ancestral", T), w=w, seed=seed, batch_size=rows,
                            callback=callback, progress=False)
    except StopEarly:
        img = None
    sync(device)
    secs = time.perf_counter() - t0
    return img, secs, state["steps"]


def digit_job(bk: Backends) -> dict:
    d = bk.s["digit"]
    n, T, w, k = d["images"], d["T"], d["w"], d["subset"]
    res = {"images": n, "T": T, "guidance_w": w, "doubled_batch": 2 * n,
           "weights": f"random DigitUNet {json.dumps(bk.nets['digit_unet'].config)}, {DAMPED['digit_unet']}",
           "goal_s": 15.0, "parity_subset": k, "backends": {}}

    def warm(engine, rows):
        feeds = feeds_for("digit_unet", 2 * rows, bk.device, bk.s, seed=2)
        t = time.perf_counter()
        engine.run(feeds)
        sync(bk.device)
        return time.perf_counter() - t

    # Reference images for the first k digits: fp32, full T steps, eager.
    ref_engine = bk.get(REFERENCE, "digit_unet")
    warm(ref_engine, k)
    img, secs, _ = _digit_run(ref_engine, n_all=n, rows=k, T=T, w=w, device=bk.device, cap_s=math.inf)
    ref_pics = [to_uint8_signed(i) for i in img]
    res["reference_subset"] = {"backend": REFERENCE, "images": k, "seconds": secs}
    bk.ctx.log(f"  reference subset ({k} images, fp32): {secs:.2f} s")

    def one(b):
        engine = bk.get(b, "digit_unet")
        setup = warm(engine, n)
        fp32 = b == REFERENCE
        cap = min(d["fp32_cap_s"] if fp32 else d["cap_s"], max(5.0, bk.ctx.left() - d["reserve_s"]))
        before = allocated_mib(bk.device)
        reset_peak(bk.device)
        img, secs, done = _digit_run(engine, n_all=n, rows=n, T=T, w=w, device=bk.device, cap_s=cap,
                                     max_steps=d["fp32_max_steps"] if fp32 else None)
        r = {"warmup_s": setup, "steps_run": done, "peak_mib": peak_mib(bk.device), "resident_mib_before": before}
        if img is None:
            r.update({"seconds": secs / done * T, "extrapolated": True, "measured_s": secs,
                      "note": f"ran {done} of {T} steps ({secs:.1f} s) and extrapolated linearly"})
        else:
            pics = [to_uint8_signed(i) for i in img[:k]]
            mses = [mse_255(a, p) for a, p in zip(ref_pics, pics)]
            r.update({"seconds": secs, "extrapolated": False, "image_mse_255_vs_fp32": sum(mses) / len(mses),
                      "max_image_mse_255": max(mses)})
        r["images_per_s"] = n / r["seconds"]
        bk.ctx.log(f"  {b:18s} {r['seconds']:8.2f} s{f' (extrapolated from {done} steps)' if img is None else ''}"
                   + (f"  image MSE vs fp32 (first {k}) {r['image_mse_255_vs_fp32']:.4f}"
                      if "image_mse_255_vs_fp32" in r else ""))
        return r

    res["backends"] = for_each_backend(bk, one, section="digit_job", include_reference=True)
    return res


def classifier_e2e(bk: Backends) -> dict:
    """The classifiers end to end: labels of a batch of images, against the fp32 reference."""
    out = {}
    n = bk.s["classifier_images"]
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 3, 28, 28, generator=g).to(bk.device)
    for model in CLASSIFIERS:
        name = get_spec(model).outputs[0].name
        ref = bk.get(REFERENCE, model).run({"x": x})[name]

        def one(b, model=model, name=name, ref=ref):
            engine = bk.get(b, model)
            engine.run({"x": x})
            sync(bk.device)
            t = time.perf_counter()
            o = engine.run({"x": x})[name]
            sync(bk.device)
            secs = time.perf_counter() - t
            agree = float((o.argmax(1) == ref.argmax(1)).float().mean())
            r = {"images": n, "seconds": secs, "label_agreement": agree,
                 "max_abs_diff": float((o.float() - ref.float()).abs().max())}
            bk.ctx.log(f"  {model:17s} {b:18s} labels agree {agree:.4f}  max abs {r['max_abs_diff']:.2e}")
            return r

        out[model] = for_each_backend(bk, one, section="classifier_e2e")
    return out


def goals(results: dict, smoke: bool) -> dict:
    """The targets of the GPU issue, checked against what was measured."""
    def best(job):
        rows = [(r["seconds"], b) for b, r in (results.get(job) or {}).get("backends", {}).items()
                if isinstance(r, dict) and "seconds" in r and not r.get("extrapolated")]
        return min(rows) if rows else (None, None)

    g = {}
    for job, target in (("face_job", 1.0), ("digit_job", 15.0)):
        secs, b = best(job)
        g[f"{job}_s"] = {"target": target, "best_s": secs, "backend": b,
                         "passed": secs is not None and secs <= target}
    mse = {}
    for job in ("face_job", "digit_job"):
        for b, r in (results.get(job) or {}).get("backends", {}).items():
            if isinstance(r, dict) and "image_mse_255_vs_fp32" in r:
                mse[f"{job}/{b}"] = r["image_mse_255_vs_fp32"]
    fp16 = {k: v for k, v in mse.items() if "fp16" in k}
    g["fp16_e2e_image_mse_le_0.3"] = {"values": fp16, "bf16_values": {k: v for k, v in mse.items() if "bf16" in k},
                                      "passed": bool(fp16) and all(v <= 0.3 for v in fp16.values())}
    speed, other = {}, {}
    for b, r in (results.get("cuda_graphs") or {}).items():
        if isinstance(r, dict) and "batches" in r:
            for batch, row in r["batches"].items():
                if int(batch) <= 64:
                    # The goal is about the fp16 paths; fp32/bf16 are reported beside it.
                    (speed if "fp16" in b else other)[f"{b}@{batch}"] = row["speedup"]
    g["graphs_faster_at_batch_le_64"] = {"fp16_speedups": speed, "other_speedups": other,
                                         "passed": bool(speed) and all(v > 1 for v in speed.values())}
    if smoke:
        g["note"] = "cpu smoke run: tiny sizes, no CUDA graphs; the targets apply to the GPU run only"
    return g


def table(results: dict) -> str:
    header = (f"{'backend':20s} {'face s':>8s} {'face MSE':>9s} {'digit s':>9s} {'digit MSE':>9s} "
              f"{'peak MiB':>9s}  notes")
    lines = ["", header]
    face = (results.get("face_job") or {}).get("backends", {})
    digit = (results.get("digit_job") or {}).get("backends", {})
    names = list(dict.fromkeys([*face, *digit]))

    def f(v, fmt):
        width = int(fmt.split(".")[0])
        return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)

    for b in names:
        fr, dr = face.get(b, {}), digit.get(b, {})
        note = fr.get("skipped") or dr.get("skipped") or fr.get("error") or dr.get("error") or ""
        if dr.get("extrapolated"):
            note = f"digit extrapolated from {dr.get('steps_run')} steps" + (f"; {note}" if note else "")
        peaks = [v for v in (fr.get("peak_mib"), dr.get("peak_mib")) if isinstance(v, (int, float))]
        lines.append(f"{b:20s} {f(fr.get('seconds'), '8.3f')} {f(fr.get('image_mse_255_vs_fp32'), '9.4f')} "
                     f"{f(dr.get('seconds'), '9.2f')} {f(dr.get('image_mse_255_vs_fp32'), '9.4f')} "
                     f"{f(max(peaks) if peaks else None, '9.0f')}  {note[:70]}")
    graphs = results.get("cuda_graphs") or {}
    rows = [(b, r) for b, r in graphs.items() if isinstance(r, dict) and "batches" in r]
    if rows:
        batches = list(rows[0][1]["batches"])
        what = "graphs" if results.get("mode") == "gpu" else "bucketed (CPU: no graphs)"
        lines += ["", f"digit UNet per call, eager ms / {what} ms (speedup):",
                  f"{'backend':22s} " + " ".join(f"{'b=' + x:>22s}" for x in batches)]
        for b, r in rows:
            cells = [f"{v['eager_ms']:.3f}/{v['graph_ms']:.3f} (x{v['speedup']:.2f})" for v in r["batches"].values()]
            lines.append(f"{b:22s} " + " ".join(f"{c:>22s}" for c in cells))
    g = results.get("goals") or {}
    if g:
        lines += ["", "goals:"]
        for k, v in g.items():
            if isinstance(v, dict):
                extra = f" best {v['best_s']:.3f}s ({v['backend']})" if v.get("best_s") is not None else ""
                lines.append(f"  {k:34s} {'PASS' if v.get('passed') else 'FAIL'}{extra}")
            else:
                lines.append(f"  {v}")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, end to end (< 2 min)")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else outputs/gpu_check)")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole run (GPU default 420)")
    ap.add_argument("--backends", default=None, help="comma-separated subset of the backends")
    ap.add_argument("--cache-dir", type=Path, default=None, help="engine cache (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch and ONNX Runtime (default: 1 for --cpu-smoke, torch's own on a GPU:"
                         " on a busy machine, waiting for a descheduled OpenMP thread costs 100x)")
    args = ap.parse_args(argv)

    mode = "cpu-smoke" if args.cpu_smoke else "gpu"
    s = SETTINGS[mode]
    out_dir = args.out or Path(os.environ.get("OUT") or "outputs/gpu_check")
    ctx = Check(out_dir, mode, args.budget or s["budget_s"])
    if mode == "gpu" and not torch.cuda.is_available():
        ctx.log("no CUDA GPU visible to torch: run with --cpu-smoke on a CPU machine")
        ctx.results["error"] = "no CUDA GPU"
        ctx.save()
        return 2
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    threads = args.threads or (1 if mode == "cpu-smoke" else None)
    if threads:
        torch.set_num_threads(threads)
    if mode == "gpu":
        strict_fp32()
        torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: autotune once in the warm-up
    names = [b.strip() for b in args.backends.split(",")] if args.backends else \
        list(GPU_BACKENDS if mode == "gpu" else CPU_BACKENDS)
    names = [REFERENCE] + [b for b in dict.fromkeys(names) if b != REFERENCE]  # the reference runs first
    ctx.results["settings"] = {**s, "backends": names, "device": str(device), "only_in": ONLY_IN,
                               "threads": threads or torch.get_num_threads()}
    ctx.log(f"hw2rt gpu_check ({mode}) on {device}; budget {ctx.budget_s:.0f} s; backends {', '.join(names)}")

    tmp_cache = None
    if args.cache_dir is None:
        tmp_cache = Path(tempfile.mkdtemp(prefix="hw2rt-gpu-check-"))
    cache_dir = args.cache_dir or tmp_cache
    bk = None
    try:
        ctx.section("environment", lambda: environment(device))
        nets = {}

        def models():
            t = time.perf_counter()
            nets["face_unet"] = random_model("face_unet", s["face"]["config"], seed=0)
            nets["digit_unet"] = random_model("digit_unet", s["digit"]["config"], seed=0)
            nets["dann"] = random_model("dann", seed=0)
            nets["digit_classifier"] = random_model("digit_classifier", seed=0)
            return {m: {"config": n.config, "parameters": sum(p.numel() for p in n.parameters()),
                        "damped": DAMPED.get(m)} for m, n in nets.items()} | {"seconds": time.perf_counter() - t}

        ctx.section("models", models)
        bk = Backends(ctx, names, nets, device, s, cache_dir, threads)
        for b in names:
            with contextlib.suppress(Unavailable):
                bk.check(b)
        ctx.section("per_call_parity", lambda: per_call_parity(bk), min_s=20)
        ctx.results["backends"] = {b: {"available": b not in bk.unavailable, "reason": bk.unavailable.get(b)}
                                   for b in names}
        ctx.section("cuda_graphs", lambda: cuda_graphs(bk), min_s=15)
        ctx.section("face_job", lambda: face_job(bk), min_s=30)
        bk.close("face_unet")
        ctx.section("digit_job", lambda: digit_job(bk), min_s=60)
        bk.close("digit_unet")
        ctx.section("classifier_e2e", lambda: classifier_e2e(bk), min_s=5)
        ctx.results["backends"] = {b: {"available": b not in bk.unavailable, "reason": bk.unavailable.get(b)}
                                   for b in names}
        ctx.results["engine_setup_s"] = bk.setup_s
        if device.type == "cuda":
            ctx.results["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        ctx.results["goals"] = goals(ctx.results, mode != "gpu")
        ctx.save()
        ctx.log(table(ctx.results))
        ctx.log(f"\nwrote {ctx.json_path} in {ctx.elapsed():.0f} s")
    finally:
        if bk is not None:
            bk.close()
        if tmp_cache is not None:
            shutil.rmtree(tmp_cache, ignore_errors=True)
        ctx.save()
        ctx.log_file.close()
    errors = [k for k, v in ctx.results["sections"].items() if v.get("status") == "error"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
