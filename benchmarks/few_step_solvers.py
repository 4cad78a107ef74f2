"""The table that decides the digit job's sampler (issue 30): samplers x steps x x0 clipping, graded.

Each setting samples N digits (N/10 per class) through the digit job's own loop (`task.graded_digits`:
`jobs.sample_digits` with the job's seeds, the images exactly as `hw2rt ddpm` saves them), grades them
with the bundled grader (as `hw2rt eval-digits`), and compares the labels with the DDIM-50 digits (eta 1,
x0 clipped: the README's reference figures) of the same seed. Results go to a JSON file after every
setting (a rerun skips the settings it holds) and to a Markdown table.

    python benchmarks/few_step_solvers.py --seeds 0 --threads 2 --json benchmarks/few_step_solvers.json
    python benchmarks/few_step_solvers.py --seeds 1,2 --settings dpmpp-2m:5:clip,unipc:5:clip ...
    python benchmarks/few_step_solvers.py --report benchmarks/few_step_solvers.json   # the tables

A setting is SAMPLER:STEPS:CLIP[:ETA] (CLIP "clip" or "noclip"; ETA for ddim, default 0).
"""
import argparse
import json
import time
from datetime import date
from pathlib import Path

import torch

from hw2rt.device import cpu_flags, cpu_name
from hw2rt.engines import open_engine
from hw2rt.io import atomic_path
from hw2rt.verify.task import graded_digits

REFERENCE = "ddim:50:clip:1"
STEPS = (3, 4, 5, 8, 10, 15, 20)


def grid() -> list[str]:
    """Every setting of the issue's table, the reference first, the solvers next."""
    out = [REFERENCE]
    out += [f"{s}:{n}:{c}" for c in ("clip", "noclip") for s in ("dpmpp-2m", "unipc") for n in STEPS]
    out += [f"ddim:{n}:{c}:{eta}" for c in ("clip", "noclip") for eta in (0, 1) for n in STEPS]
    out += ["ddim:50:clip:0", "ddim:50:noclip:0", "ddim:50:noclip:1"]
    return out


def parse(setting: str) -> dict:
    sampler, steps, clip, *eta = setting.split(":")
    if clip not in ("clip", "noclip"):
        raise SystemExit(f"{setting}: CLIP must be clip or noclip")
    return {"sampler": sampler, "steps": int(steps), "clip": clip == "clip",
            "eta": float(eta[0]) if eta else 0.0}


def _row_name(r: dict) -> str:
    eta = f" eta {r['eta']:g}" if r["sampler"] == "ddim" else ""
    return f"{r['sampler']}{eta}, x0 clip {'on' if r['clip'] else 'off'}"


def report(results: dict) -> str:
    """Markdown: seed 0's grid (accuracy / agreement with DDIM 50 per step count), then every setting
    measured on several seeds, with its worst drop against that seed's DDIM 50."""
    runs = list(results["runs"].values())
    first = min(r["seed"] for r in runs)
    steps = sorted({r["steps"] for r in runs if r["seed"] == first})
    names = sorted({_row_name(r) for r in runs if r["seed"] == first},
                   key=lambda n: (n.startswith("ddim"), "off" in n, n))
    cell = {(_row_name(r), r["steps"]): r for r in runs if r["seed"] == first}
    out = [(f"Seed {first}: grader accuracy / label agreement with DDIM 50 (eta 1, clipped), 1,000 digits "
            "each"),
           "", "| sampler | " + " | ".join(f"{n} steps" for n in steps) + " |",
           "|---|" + "---|" * len(steps)]
    for name in names:
        out.append(f"| {name} | " + " | ".join(
            f"{cell[name, n]['accuracy']:.3f} / {cell[name, n]['agreement']:.3f}"
            if (name, n) in cell else "-" for n in steps) + " |")
    seeds = sorted({r["seed"] for r in runs})
    ref = {r["seed"]: r["accuracy"] for r in runs if r["sampler"] == "ddim" and r["steps"] == 50
           and r["clip"] and r["eta"] == 1.0}
    multi = {}
    for r in runs:
        multi.setdefault((_row_name(r), r["steps"]), {})[r["seed"]] = r
    out += ["", ("Settings measured on every seed: accuracy per seed, the worst drop against that seed's "
                 "DDIM 50 (points), the mean"), "",
            "| sampler | steps | " + " | ".join(f"seed {k}" for k in seeds) + " | worst drop | mean |",
            "|---|---|" + "---|" * (len(seeds) + 2)]
    for (name, n), by_seed in sorted(multi.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if set(by_seed) != set(seeds) or set(ref) != set(seeds):
            continue
        drops = [100 * (ref[k] - by_seed[k]["accuracy"]) for k in seeds]
        mean = sum(by_seed[k]["accuracy"] for k in seeds) / len(seeds)
        out.append(f"| {name} | {n} | " + " | ".join(f"{by_seed[k]['accuracy']:.3f}" for k in seeds)
                   + f" | {max(drops):+.1f} | {mean:.4f} |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="digits per setting (a multiple of 10)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--settings", default=None, help="comma-separated settings (default: the whole grid)")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("benchmarks/few_step_solvers.json"))
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument("--report", type=Path, nargs="+", default=None,
                    help="sample nothing: merge these JSON files (and --json) and print the tables")
    args = ap.parse_args()
    if args.report:
        merged = {"runs": {}}
        for path in args.report:
            merged["runs"].update(json.loads(path.read_text())["runs"])
        print(report(merged), end="")
        return

    torch.set_num_threads(args.threads)
    settings = args.settings.split(",") if args.settings else grid()
    results = json.loads(args.json.read_text()) if args.json.exists() else {"runs": {}}
    results["machine"] = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "threads": args.threads,
                          "backend": args.backend, "precision": args.precision, "torch": torch.__version__,
                          "n": args.n}
    engine = open_engine("digit_unet", None, backend=args.backend, precision=args.precision,
                         threads=args.threads)
    references = results.setdefault("reference_predictions", {})  # seed -> the DDIM-50 labels
    for seed in (int(s) for s in args.seeds.split(",")):
        for setting in ([REFERENCE] if REFERENCE not in settings else []) + settings:
            key = f"{seed}:{setting}"
            s = parse(setting)
            if key in results["runs"] and (setting != REFERENCE or str(seed) in references):
                continue
            start = time.perf_counter()
            graded = graded_digits(engine, args.n, seed=seed, sampler=s["sampler"], steps=s["steps"],
                                   eta=s["eta"], clip=s["clip"])
            seconds = time.perf_counter() - start
            predictions = graded["predictions"].tolist()
            if setting == REFERENCE:
                references[str(seed)] = predictions
            reference = references[str(seed)]
            agreement = sum(a == b for a, b in zip(predictions, reference)) / len(reference)
            results["runs"][key] = {"seed": seed, **s, "accuracy": graded["correct"] / args.n,
                                    "agreement": agreement, "seconds": seconds,
                                    "date": date.today().isoformat()}
            r = results["runs"][key]
            print(f"seed {seed} {setting}: accuracy {r['accuracy']:.3f}, agreement {r['agreement']:.3f}, "
                  f"{r['seconds']:.1f} s", flush=True)
            with atomic_path(args.json) as tmp:
                Path(tmp).write_text(json.dumps(results, indent=1) + "\n")
            if args.md is not None:
                with atomic_path(args.md) as tmp:
                    Path(tmp).write_text(report(results))


if __name__ == "__main__":
    main()
