"""ONNX Runtime vs torch eager on the CPU, side by side in one process.

    .venv/bin/python benchmarks/bench_engines.py [--threads 1] [--repeats 15] [--json out.json] [--quick]

Both backends get the same intra-op thread count (torch.set_num_threads and ORT's
intra_op_num_threads; default 1, so that a shared machine's other work disturbs less), the same
seeded random weights and inputs, and are called through the same Engine.run (feed validation
included). Runs alternate backend by backend (ABAB..., the first of each pair swapped every
repeat) so that drifting machine load hits both alike; medians and spreads (p10-p90) are reported.

Cases (random weights; speed does not depend on training):
    digit_unet n_feat=128, one call at batch 1 and at batch 20
    digit_unet, a 50-step DDIM-style loop (50 dependent calls, batch --loop-batch)
    face_unet base=128 at 64x64, one call at batch 4
Goals from the issue: ORT >= 1.5x torch at batch 1 and >= 1.2x at batch 20 (digits), and not
slower on the face UNet. Prints a markdown table; --json writes every timing.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw2rt.engines import TorchEngine, open_engine
from hw2rt.models import get_spec
from hw2rt.parity import random_model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quantile(xs, q):
    xs = sorted(xs)
    i = (len(xs) - 1) * q
    lo, hi = int(i), min(int(i) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def one_call(engine, feeds):
    def run():
        engine.run(feeds)
    return run


def ddim_loop(engine, feeds, steps=50):
    """50 dependent calls, as a sampler makes them: each step's x comes from the last eps."""
    def run():
        x = feeds["x"]
        for i in range(steps):
            t = torch.full_like(feeds["t"], 1.0 - i / steps)
            eps = engine.run({**feeds, "x": x, "t": t})["eps"]
            x = 0.98 * x - 0.02 * eps
    return run


def alternate(runners: dict, repeats: int, warmup: int = 2) -> dict:
    """Time each runner `repeats` times, interleaved, the order flipped every repeat."""
    names = list(runners)
    for _ in range(warmup):
        for n in names:
            runners[n]()
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            runners[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def summarize(times):
    return {"median_ms": 1e3 * statistics.median(times), "p10_ms": 1e3 * quantile(times, 0.1),
            "p90_ms": 1e3 * quantile(times, 0.9), "n": len(times), "all_ms": [1e3 * t for t in times]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for both backends (default 1)")
    ap.add_argument("--repeats", type=int, default=15, help="timed runs per backend for one-call cases")
    ap.add_argument("--loop-repeats", type=int, default=3, help="timed runs per backend of the 50-call loop")
    ap.add_argument("--loop-batch", type=int, default=2, help="batch of the 50-call loop (2: one guided image)")
    ap.add_argument("--face-repeats", type=int, default=5)
    ap.add_argument("--cache-dir", default=None, help="hw2rt export cache (default $HW2RT_CACHE or ~/.cache/hw2rt)")
    ap.add_argument("--json", default=None, help="write all timings here")
    ap.add_argument("--quick", action="store_true", help="small models and few repeats (a smoke run)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    import onnxruntime

    digit_cfg = {"n_feat": 32 if args.quick else 128}
    face_cfg, face_hw = ({"base": 32}, 32) if args.quick else ({"base": 128}, 64)
    reps = 3 if args.quick else args.repeats
    env = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "python": platform.python_version()}
    print(f"# bench_engines: {env['cpu']}, {args.threads} thread(s), torch {env['torch']}, "
          f"onnxruntime {env['onnxruntime']}", flush=True)

    results = []

    def case(label, model, net, dims, batch, make_runner, repeats, goal=None):
        t0 = time.perf_counter()
        ort_engine = open_engine(model, net, backend="ort", threads=args.threads, cache_dir=args.cache_dir, dims=dims)
        torch_engine = TorchEngine(net, model, threads=args.threads)
        feeds = get_spec(model).example_inputs(batch, seed=0, **dims)
        times = alternate({"torch": make_runner(torch_engine, feeds), "ort": make_runner(ort_engine, feeds)}, repeats)
        row = {"case": label, "model": model, "config": net.config, "batch": batch, "dims": dims,
               "torch": summarize(times["torch"]), "ort": summarize(times["ort"])}
        row["speedup"] = row["torch"]["median_ms"] / row["ort"]["median_ms"]
        row["goal"] = goal
        row["met"] = None if goal is None else row["speedup"] >= goal
        results.append(row)
        ort_engine.close()
        torch_engine.close()
        print(f"  {label}: torch {row['torch']['median_ms']:.1f} ms, ort {row['ort']['median_ms']:.1f} ms, "
              f"x{row['speedup']:.2f}  ({time.perf_counter() - t0:.0f}s)", flush=True)

    digits = random_model("digit_unet", digit_cfg, seed=0, damp=1.0)
    case("digit_unet, one call", "digit_unet", digits, {}, 1, one_call, reps * 2, goal=1.5)
    case("digit_unet, one call", "digit_unet", digits, {}, 20, one_call, max(3, reps // 2), goal=1.2)
    case("digit_unet, 50-step loop", "digit_unet", digits, {}, args.loop_batch, ddim_loop,
         2 if args.quick else args.loop_repeats)
    face = random_model("face_unet", face_cfg, seed=0, damp=1.0)
    case(f"face_unet {face_hw}x{face_hw}, one call", "face_unet", face, {"height": face_hw, "width": face_hw}, 4,
         one_call, 2 if args.quick else args.face_repeats, goal=1.0)

    print()
    print(table(results, env))
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0 if all(r["met"] is not False for r in results) else 1


def table(results, env) -> str:
    head = (f"CPU: {env['cpu']}; threads: {env['threads']} (torch and ORT); torch {env['torch']}, "
            f"onnxruntime {env['onnxruntime']}; median [p10-p90] in ms")
    lines = [head,
             "",
             "| case | config | batch | torch eager | ort | ort speed-up | goal |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k in ("n_feat", "base"))
        goal = "-" if r["goal"] is None else f">= {r['goal']}x {'met' if r['met'] else 'MISSED'}"
        t, o = r["torch"], r["ort"]
        lines.append(f"| {r['case']} | {cfg} | {r['batch']} | {t['median_ms']:.1f} [{t['p10_ms']:.1f}-{t['p90_ms']:.1f}] | "
                     f"{o['median_ms']:.1f} [{o['p10_ms']:.1f}-{o['p90_ms']:.1f}] | {r['speedup']:.2f}x | {goal} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
