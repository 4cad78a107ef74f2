"""The one GPU check for a lent machine: the bench package's gpu suite (hw2rt/bench/suites.py).

    PYTHONPATH=. python3 benchmarks/gpu_check.py                # on a CUDA machine (< 8 min)
    PYTHONPATH=. python3 benchmarks/gpu_check.py --cpu-smoke    # the same scenarios, tiny, on the CPU

Writes gpu_check.json (rewritten after every section: a killed run still leaves what it measured),
gpu_check.md and gpu_check.log to --out (default: $OUT, else outputs/gpu_check). What it measures:
every GPU runner per call (parity against IEEE fp32, CUDA graphs on and off), the face job (10 faces,
256x256, 50 DDIM steps) and the digit job (1000 digits, 1000 guided DDPM steps) through the jobs' own
loops (headline first: the face job, then the digit job, as `--backend auto --precision fp16` runs
them, with each one's fraction of the peak and where a step's time went), the device checks (CUDA graphs
vs eager, TensorRT vs torch), DANN over a folder, peak memory, and the goals (faces <= 1 s, digits <= 15 s,
fp16 image MSE <= 0.3, graphs faster than eager at batch <= 64), each reported, with "not measured:
<reason>" where its section could not run. Exit status: 0, 1 when a section failed, 2 when there is no
GPU for the gpu suite.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from hw2rt.bench.report import markdown, write_markdown
from hw2rt.bench.suites import make_suite, run_bench


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, end to end (< 2 min)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: $OUT, else outputs/gpu_check)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run (default: the suite's)")
    ap.add_argument("--backends", default=None, help="comma-separated runners (default: the suite's)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="engine cache, kept between runs so that TensorRT plans are built once (default: "
                         "$HW2RT_CACHE, else ~/.cache/hw2rt, as every command); the report gives each "
                         "runner's open (build) time apart from its run time")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: the suite's: 1 for --cpu-smoke, torch's own on a GPU)")
    args = ap.parse_args(argv)

    out = args.out or Path(os.environ.get("OUT") or "outputs/gpu_check")
    out.mkdir(parents=True, exist_ok=True)
    suite = make_suite("cpu-smoke" if args.cpu_smoke else "gpu",
                       backends=[b.strip() for b in args.backends.split(",")] if args.backends else None)
    with open(out / "gpu_check.log", "w") as log_file:
        def log(msg=""):
            print(msg, flush=True)
            log_file.write(msg + "\n")
            log_file.flush()

        if suite.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                log("no CUDA GPU visible to torch: run with --cpu-smoke on a CPU machine")
                (out / "gpu_check.json").write_text(json.dumps({"suite": suite.name, "error": "no CUDA GPU"})
                                                    + "\n")
                return 2
        result = run_bench(suite, threads=args.threads, cache_dir=args.cache_dir, budget_s=args.budget,
                           json_path=out / "gpu_check.json",
                           command=" ".join(["gpu_check.py", *sys.argv[1:]]), log=log)
        write_markdown(result, out / "gpu_check.md")
        log(markdown(result))
        log(f"wrote {out / 'gpu_check.json'} in {result['wall_s']:.0f} s")
    return 1 if any(s["status"] == "error" for s in result["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
