"""ONNX Runtime vs torch eager on the CPU: the engine issue's four figures, as a scenario of hw2rt.bench.

    .venv/bin/python benchmarks/bench_engines.py [--threads 1] [--quick] [--json out.json]

Cases (seeded random weights; speed does not depend on training):
    digit_unet n_feat=128, one call at batch 1 and at batch 20
    digit_unet, a 50-step DDIM loop at batch 2 (one guided image: 50 dependent calls)
    face_unet base=128 at 64x64, one call at batch 4
Goals from the engine issue: ORT >= 1.5x torch at batch 1 and >= 1.2x at batch 20 (digits), and
not slower on the face UNet. Timing, alternation, parity and the report are hw2rt.bench's
(`hw2rt bench` runs these cases among many more); this script keeps the four figures on their own.
Exit status 1 if a goal is missed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw2rt import bench

GOALS = {("digit_unet", 1): 1.5, ("digit_unet", 20): 1.2, ("face_unet", 4): 1.0}


def engines_suite(quick: bool = False) -> bench.Suite:
    digit = {"n_feat": 32 if quick else 128}
    face, hw = ({"base": 32}, 32) if quick else ({"base": 128}, 64)
    return bench.Suite(
        cases=[bench.Case("digit_unet", digit, {}, (1, 20)),
               bench.Case("face_unet", face, {"height": hw, "width": hw}, (4,))],
        backends=["torch", "ort"], digit_loop={"images": 1, "steps": 10 if quick else 50}, face_loop=None,
        dann_images=None, growth=None, point_s=1.0 if quick else 8.0, max_repeats=30,
        loop_repeats=2 if quick else 3, peak_budget_s=0.05 if quick else 0.25)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for both backends (default 1)")
    ap.add_argument("--json", default=None, help="write the full result here")
    ap.add_argument("--quick", action="store_true", help="small models and few repeats (a smoke run)")
    args = ap.parse_args(argv)

    given = sys.argv[1:] if argv is None else argv
    result = bench.run_bench(threads=args.threads, suite=engines_suite(args.quick),
                             command=" ".join(["benchmarks/bench_engines.py", *given]),
                             log=lambda m: print(m, file=sys.stderr, flush=True))
    result["goals"] = []  # the issue #7 goals do not apply to this two-runner scenario
    print(bench.markdown(result))
    missed = []
    for r in result["per_call"]:
        goal = GOALS.get((r["model"], r["batch"]))
        if r["backend"] == "ort" and goal is not None and r["speedup_vs_torch"] is not None:
            verdict = "met" if r["speedup_vs_torch"] >= goal else "MISSED"
            print(f"goal: ort >= {goal}x torch on {r['model']} batch {r['batch']}: "
                  f"{r['speedup_vs_torch']:.2f}x {verdict}")
            if verdict == "MISSED":
                missed.append(r)
    if args.json:
        bench.write_json(result, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
