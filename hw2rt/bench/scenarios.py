"""The scenarios every suite is made of: the per-call sweep, the jobs' own loops (bench/loops.py), DANN
over a folder as `hw2rt classify` runs it, and the cost growth of the digit loop. Runners alternate, so
a shared machine's load hits all alike; every ratio and parity figure is against torch eager fp32 in the
same run. A runner that fails gets its row with the reason; the others are still measured.
"""
from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

from hw2rt.bench.loops import Loop, digit_loop_fns, engine_label, loop_line, loop_skip, scenario_row
from hw2rt.bench.measure import PeakMemory, alternate, failure, flops_per_item, linear_fit, summarize, timed
from hw2rt.bench.runners import REFERENCE, RUNNERS, compute_precision, graded_precision
from hw2rt.models import get_spec
from hw2rt.runtime.jobs import classify_job
from hw2rt.verify.parity import BUDGETS, compare_outputs

# Every row has every key (None where not measured): the JSON's shape does not depend on what ran.
CALL_FIELDS = ("median_ms", "p10_ms", "p90_ms", "n", "first_call_ms", "first_call_memory_mib", "items_per_s",
               "gflop_per_call", "achieved_gflops", "peak_gflops", "peak_fraction", "memory_mib",
               "memory_method", "parity_metric", "parity_value", "parity_budget", "parity_passed",
               "speedup_vs_torch", "skipped")


def _empty_row(**ids) -> dict:
    return {**ids, **dict.fromkeys(CALL_FIELDS)}


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
                                     backend=name, label=engine_label(name, engine),
                                     precision=graded_precision(name, device),
                                     compute_precision=compute_precision(name, device))
            if isinstance(engine, str):  # it failed to open: the reason
                point[name]["skipped"] = engine
            elif name in case.skip:
                point[name]["skipped"] = case.skip[name]
            elif (isinstance(r.get("compile"), dict) and case.compile_batches is not None
                  and batch not in case.compile_batches):
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
        outs, est, failed = {}, {}, {}
        fns = {n: partial(e.run, feeds) for n, e in active.items()}
        for name, fn in list(fns.items()):  # warm-up: a first call (compiles, allocates), then a steady one
            try:
                with PeakMemory(device) as first_mem:
                    first, _ = timed(fn, device)
                with PeakMemory(device) as mem:
                    est[name], outs[name] = timed(fn, device)
            except Exception as exc:  # noqa: BLE001 -- one runner's failure is its row's reason
                failed[name] = failure(exc)
                del fns[name]
                continue
            point[name].update(first_call_ms=1e3 * first, first_call_memory_mib=first_mem.mib,
                               memory_mib=mem.mib, memory_method=mem.method)
        repeats = {n: max(suite.min_repeats, min(suite.max_repeats, round(suite.point_s / max(est[n], 1e-6))))
                   for n in fns}
        times, _ = alternate(fns, repeats, device, failed)
        ref = point[REFERENCE]
        for name, reason in failed.items():
            point[name]["skipped"] = reason
        for name in (n for n in active if n not in failed):
            row = point[name]
            row.update(summarize(times[name]))
            secs = row["median_ms"] / 1e3
            steady[name] = (batch, secs)
            peak = peaks.get(row["compute_precision"], {}).get("gflops")
            gflop = per_item * batch / 1e9
            budget = BUDGETS[row["precision"]]["per_call_rel_max_abs"]
            stats = compare_outputs(outs[REFERENCE], outs[name], budget) if REFERENCE in times else {}
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
            if isinstance(engine, str):
                continue  # it failed to open: the per-call rows say why
            # Label agreement is informational (no budget): a random DANN's log-probabilities are
            # near ties that rounding flips where a trained one's would not; the sweep's per-call
            # parity is the budgeted check.
            row = scenario_row(scenario="dann_folder", model="dann", config={}, dims={}, batch=batch,
                                images=images, steps=None, backend=name, label=RUNNERS[name]["label"],
                                precision=graded_precision(name, device), parity_metric="label_agreement",
                                skipped=loop_skip(name, calls.get(name), suite))
            rows.append(row)
            if row["skipped"] is None:
                def classify(e=engine, csv=Path(tmp, f"{name}.csv")):
                    classify_job(e, folder, csv, batch_size=batch, progress=False)
                    return csv.read_text()

                fns[name] = classify
                active[name] = row
        failed = {}
        times, outs = alternate(fns, dict.fromkeys(fns, suite.loop_repeats), device, failed)
    ref = outs.get(REFERENCE, "").splitlines() if REFERENCE not in failed else []
    for name, row in active.items():
        if name in failed:
            row["skipped"] = failed[name]
            continue
        row.update(summarize(times[name], "s"))
        row["images_per_s"] = images / row["median_s"]
        if ref:
            got = outs[name].splitlines()
            row["parity_value"] = sum(a == b for a, b in zip(ref[1:], got[1:])) / max(1, len(ref) - 1)
    for row in rows:
        if row["median_s"] is not None and active.get(REFERENCE, {}).get("median_s"):
            row["speedup_vs_torch"] = active[REFERENCE]["median_s"] / row["median_s"]
        log(loop_line({**row, "steps": "-"}))
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
            fns = digit_loop_fns(engines, net, Loop(images=images, steps=steps), device).timed
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
