"""Measurements: alternating timing, peak memory of a call, FLOPs of a network, this machine's
peak FLOP/s per precision, the environment, a linear fit. Every suite uses these and no others."""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import torch

from hw2rt.bench.runners import is_cuda
from hw2rt.device import cpu_flags, cpu_name
from hw2rt.errors import first_line


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "diffusers", "numpy", "tensorrt", "hw2rt"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def environment(device, threads: int | None) -> dict:
    """The machine, the libraries and (on a GPU) the device, driver and TensorRT: what a figure depends on."""
    from hw2rt.engines.ort import available_providers
    from hw2rt.engines.trt import tensorrt_version
    from hw2rt.export.int8 import weight_range

    env = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
           "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "ort_int8_weight_range": weight_range("ort"),
           "threads": threads or torch.get_num_threads(),
           "device": str(device), "platform": platform.platform(), "loadavg_start": list(os.getloadavg()),
           "versions": _versions(), "ort_providers": available_providers(), "tensorrt": tensorrt_version()}
    if is_cuda(device):
        p = torch.cuda.get_device_properties(torch.device(device))
        env.update({"gpu": torch.cuda.get_device_name(torch.device(device)),
                    "capability": f"{p.major}.{p.minor}",
                    "gpu_memory_gib": round(p.total_memory / 2**30, 1), "sm_count": p.multi_processor_count,
                    "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()})
        if shutil.which("nvidia-smi"):
            try:
                q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm,power.limit",
                                    "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20, check=False)
                env["nvidia_smi"] = q.stdout.strip()
            except (OSError, subprocess.SubprocessError) as exc:
                env["nvidia_smi"] = f"failed: {first_line(exc)}"
    return env


@contextlib.contextmanager
def strict_fp32():
    """IEEE fp32 for the reference on a GPU inside the block (torch runs fp32 convolutions in TF32 by
    default on Ampere+), restored after. The legacy flags only: once torch's new per-backend
    `fp32_precision` API is set, reading the legacy ones raises (torch 2.13: "a mix of the legacy and
    new APIs"), and Inductor reads the legacy ones when it compiles."""
    flags = (torch.backends.cudnn, torch.backends.cuda.matmul)
    before = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = False
        yield
    finally:
        for f, on in zip(flags, before):
            f.allow_tf32 = on


def quantile(xs, q: float) -> float:
    xs = sorted(xs)
    i = (len(xs) - 1) * q
    lo, hi = int(i), min(int(i) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def summarize(seconds: list, unit: str = "ms") -> dict:
    k = 1e3 if unit == "ms" else 1.0
    return {f"median_{unit}": k * statistics.median(seconds), f"p10_{unit}": k * quantile(seconds, 0.1),
            f"p90_{unit}": k * quantile(seconds, 0.9), "n": len(seconds)}


def sync(device):
    if is_cuda(device):
        torch.cuda.synchronize(device)


def timed(fn, device):
    """(seconds, result) of one call, the device synchronised on both sides."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def alternate(fns: dict, repeats: dict, device, failed: dict | None = None) -> tuple[dict, dict]:
    """Run fns[name] repeats[name] times, interleaved round by round, the order reversed every round.
    Returns (seconds per name, last result per name). With `failed`, a function that raises is
    recorded there (name -> the first line of its error) and left out of the later rounds, so one
    broken runner does not stop the others; without it, the error propagates."""
    names = list(fns)
    times, last = {n: [] for n in names}, {}
    for r in range(max(repeats.values(), default=0)):
        for n in (names if r % 2 == 0 else names[::-1]):
            if r < repeats[n] and (failed is None or n not in failed):
                try:
                    dt, last[n] = timed(fns[n], device)
                except Exception as exc:  # any runner error: its row says why
                    if failed is None:
                        raise
                    failed[n] = failure(exc)
                    continue
                times[n].append(dt)
    return times, last


def failure(exc: BaseException) -> str:
    """A failed runner's reason, as its row shows it: the error's type and first line."""
    return f"failed: {type(exc).__name__}: {first_line(exc, 200)}"


def side_by_side(fns: dict, repeats: int, device) -> dict:
    """One warm-up call each, then `repeats` alternating rounds: {name: summarize(...) in ms}."""
    for fn in fns.values():
        timed(fn, device)
    times, _ = alternate(fns, dict.fromkeys(fns, repeats), device)
    return {name: summarize(seconds) for name, seconds in times.items()}


def _rss_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(field_name)


def _release_free_memory():
    """Hand memory that malloc keeps after frees back to the OS, so that the next call's
    activations show up as new RSS (glibc only; elsewhere a no-op)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block, in MiB above what was in use when it began.

    CUDA: torch's allocator high-water mark (ORT/TensorRT allocate outside it: not seen).
    CPU: the process's RSS high-water mark (VmHWM), reset on entry through /proc/self/clear_refs,
    after malloc's free memory went back to the OS; where that reset is not allowed, ru_maxrss
    growth (a lower bound: 0 unless a new peak is set). Allocators that keep their own pool
    (ONNX Runtime's arena) show their growth on the first call at a size, not on later ones.
    """

    def __init__(self, device):
        self.cuda = is_cuda(device)
        self.device = device
        self.mib = None
        self.method = None

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated (torch allocations only)"
            return self
        _release_free_memory()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            self.start = _rss_kib("VmRSS")
            self.method = "RSS high-water mark (VmHWM after clear_refs) minus RSS before"
        except OSError:
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss growth (lower bound)"
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        elif self.method.startswith("RSS"):
            self.mib = (_rss_kib("VmHWM") - self.start) / 1024
        else:
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.start) / 1024


def flops_per_item(model: str, config: dict, dims: dict) -> float:
    """FLOPs of one image through `model` (torch's FLOP counter on a meta-device copy: no arithmetic
    runs). Every layer of these networks works per image, so a call costs batch x this."""
    from torch.utils.flop_counter import FlopCounterMode

    from hw2rt.models import build_model, get_spec

    spec = get_spec(model)
    with torch.device("meta"):
        net = build_model(model, config).eval()
        feeds = spec.example_inputs(1, seed=0, **dims)  # generator draws on the CPU; moved below
    feeds = {k: v.to("meta") for k, v in feeds.items()}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(*(feeds[s.name] for s in spec.inputs))
    return float(counter.get_total_flops())


def _ladder(make, flops_of, sizes, device, budget_s) -> float:
    """Best FLOP/s over growing problem sizes; stops once one call takes `budget_s`."""
    best = 0.0
    for n in sizes:
        fn = make(n)
        timed(fn, device)  # first touch, kernel selection
        dt = min(timed(fn, device)[0] for _ in range(5))
        best = max(best, flops_of(n) / dt)
        if dt > budget_s:
            break
    return best


def measure_peak(precision: str, device, *, budget_s: float = 0.25) -> dict:
    """This machine's FLOP/s in `precision` at the current thread count: the best of a square
    matmul and a 3x3 convolution (256 channels, channels-last), each at growing sizes, best of 5.
    int8: integer multiply-adds of `torch._int_mm` (int8 x int8 -> int32; torch has no int8 conv)."""
    device = torch.device(device)
    if precision == "int8":
        def int_mm(n):
            a, b = (torch.randint(-128, 128, (n, n), dtype=torch.int8, device=device) for _ in range(2))
            return lambda: torch._int_mm(a, b)

        sizes = (256, 512, 1024, 2048, 4096)
        with torch.inference_mode():
            mm = _ladder(int_mm, lambda n: 2.0 * n ** 3, sizes, device, budget_s)
        return {"gflops": mm / 1e9, "matmul_gflops": mm / 1e9, "conv_gflops": None, "best": "int_mm"}
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    hw = 64 if device.type == "cuda" else 32
    ch = 256

    def matmul(n):
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        return lambda: a @ b

    def conv(n):
        x = torch.randn(n, ch, hw, hw, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(ch, ch, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        return lambda: torch.nn.functional.conv2d(x, w, padding=1)

    msizes = (256, 512, 1024, 2048, 4096) + ((8192,) if device.type == "cuda" else ())
    bsizes = (1, 2, 4, 8, 16, 32) + ((64, 128) if device.type == "cuda" else ())
    with torch.inference_mode():
        mm = _ladder(matmul, lambda n: 2.0 * n ** 3, msizes, device, budget_s)
        cv = _ladder(conv, lambda n: 2.0 * n * ch * ch * 9 * hw * hw, bsizes, device, budget_s)
    return {"gflops": max(mm, cv) / 1e9, "matmul_gflops": mm / 1e9, "conv_gflops": cv / 1e9,
            "best": "matmul" if mm >= cv else "conv3x3"}


def linear_fit(xs: list, ys: list) -> dict:
    """Least squares y = a + b*x, with R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
    return {"a_s": a, "b_s": b, "r2": r2, "linear": r2 >= 0.98}
