"""The assignment's jobs on a CPU, run as a user runs them (issue 29, item 5): `scripts/hw2_1.sh` (1,000
digits), `scripts/hw2_2.sh` (10 faces, 256x256, 50 DDIM steps, the full-size face UNet) and
`scripts/hw2_3.sh` (DANN labels of the stand-in USPS-like and SVHN-like folders), each as the
script runs it (`--backend auto --precision auto`: what engines/auto.py chooses on this CPU) and as the
fp32 reference path (`--backend ort --precision fp32`), the faces also in bf16 asked for by name
(`--backend auto --precision bf16`) and on torch eager fp32, with the machine's default threads (none
named).

    python benchmarks/assignment_jobs.py --json benchmarks/assignment_jobs.json
    python benchmarks/assignment_jobs.py --face-steps 5     # time 5 steps, extrapolate to 50 (labelled)
    python benchmarks/assignment_jobs.py --jobs dann --json benchmarks/assignment_jobs_dann.json

The faces' UNet.pt is the full-size FaceUNet (base 128) with seeded random, damped weights (speed does
not depend on training; the damping keeps the trajectory from being chaotic, so the image MSE between the
two paths means something). Each path runs once at 1 step first (the export and compile caches filled, as
for a user's second run). With --face-steps below 50 both face runs take that many steps and the 50-step
time is extrapolated from the job's own time per step (one engine call per step: linear), and the row
says so. The digits use the bundled digit UNet and grader: the script's own default. The DANN job labels
the folders `hw2rt data synth` makes (USPS-like 1,797 images, SVHN-like 2,000) with the bundled DANNs;
label agreement with fp32 and the accuracy on each folder's labelled test images are reported.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HW2RT = str(Path(sys.executable).parent / "hw2rt")
FP32 = ["--backend", "ort", "--precision", "fp32"]
BF16 = ["--backend", "auto", "--precision", "bf16"]  # the faces: bf16 by name, whatever its gate said
TORCH = ["--backend", "torch", "--precision", "fp32"]  # the faces: torch eager fp32, the goal's yardstick


def run(cmd: list, env: dict) -> dict:
    """One command, timed as a whole (process start, engine open, the job, the files)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    auto = next((line for line in r.stdout.splitlines() if line.startswith("auto: ")), None)
    return {"command": " ".join(map(str, cmd)), "seconds": seconds, "auto": auto, "stdout": r.stdout.strip()}


def face_inputs(work: Path, size: int) -> tuple[Path, Path]:
    from hw2rt.verify.parity import random_model

    unet = work / "UNet.pt"
    if not unet.is_file():
        torch.save(random_model("face_unet", seed=0).state_dict(), unet)  # the assignment's size (base 128)
    noise = work / "noise"
    noise.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        torch.save(torch.randn(1, 3, size, size, generator=g), noise / f"{i:02d}.pt")
    return unet, noise


def image_mse(a: Path, b: Path) -> float:
    """Mean over the images of the MSE on the 0-255 scale (the assignment's grading)."""
    mses = []
    for p in sorted(a.glob("*.png")):
        x = np.asarray(Image.open(p), dtype=np.float64)
        y = np.asarray(Image.open(b / p.name), dtype=np.float64)
        mses.append(float(((x - y) ** 2).mean()))
    return sum(mses) / len(mses)


def faces(work: Path, env: dict, steps: int, size: int) -> dict:
    unet, noise = face_inputs(work, size)
    out = {}
    for name, extra in (("script", None), ("fp32", FP32), ("bf16", BF16), ("torch", TORCH)):
        cmd = [HW2RT, "ddim", "--noise-dir", noise, "--out", work / name, "--checkpoint", unet, "--eta", "0",
               "--steps", str(steps), *(extra or ["--backend", "auto", "--precision", "auto"])]
        at = cmd.index("--steps") + 1
        run([*cmd[:at], "1", *cmd[at + 1:]], env)  # the export / compile caches filled, as on a second run
        if extra is None and steps == 50:
            cmd = ["bash", str(ROOT / "scripts" / "hw2_2.sh"), noise, work / name, unet]
        out[name] = run(cmd, env)
        if steps != 50:  # the job is one engine call per step: its own time scales with the steps
            job_s = float(re.search(r" in ([0-9.]+) s", out[name]["stdout"]).group(1))
            out[name].update({"steps_run": steps, "job_s": job_s, "per_step_s": job_s / steps,
                              "seconds_50_extrapolated": out[name]["seconds"] + (50 - steps) * job_s / steps})
    def seconds(name):
        return out[name].get("seconds_50_extrapolated", out[name]["seconds"])

    for name in ("script", "bf16", "torch"):
        out[name]["image_mse_255"] = image_mse(work / name, work / "fp32")
        out[name]["speedup"] = seconds("fp32") / seconds(name)
    return out


def digits(work: Path, env: dict) -> dict:
    words = [w for w in (ROOT / "scripts" / "hw2_1.sh").read_text().split("exec", 1)[1].split() if w != "\\"]
    args = words[words.index("--per-digit"): words.index("--backend")]
    fp32 = [HW2RT, "ddpm", "--out", work / "fp32", *args, *FP32]
    warm = [HW2RT, "ddpm", "--out", work / "warm", "--per-digit", "1", *args[2:]]
    for extra in (["--backend", "auto", "--precision", "auto"], FP32):  # the caches filled (int8: calibrated)
        run([*warm, *extra], env)
    out = {"script": run(["bash", str(ROOT / "scripts" / "hw2_1.sh"), work / "script"], env)}
    out["fp32"] = run(fp32, env)
    for name in ("script", "fp32"):  # the bundled grader, as `hw2rt eval-digits` grades
        r = subprocess.run([HW2RT, "eval-digits", "--images", work / name], capture_output=True, text=True,
                           env=env, check=True)
        out[name]["grader"] = r.stdout.strip().splitlines()[0]  # "accuracy 0.9870 (987/1000)"
    out["speedup"] = out["fp32"]["seconds"] / out["script"]["seconds"]
    return out


def labels(csv: Path) -> dict:
    rows = csv.read_text().split()[1:]  # image_name,label
    return dict(row.split(",") for row in rows)


def dann(work: Path, env: dict) -> dict:
    data = work / "sd"
    if not data.is_dir():
        subprocess.run([HW2RT, "data", "synth", "--out", data, "--n-mnistm", "100", "--n-svhn", "2000",
                        "--n-faces", "10"], capture_output=True, env=env, check=True)
    out = {}
    for domain in ("usps", "svhn"):
        folder = data / "digits" / domain / "data"
        script = ["bash", str(ROOT / "scripts" / "hw2_3.sh"), folder, work / f"{domain}_script.csv"]
        fp32 = [HW2RT, "classify", "--images", folder, "--out", work / f"{domain}_fp32.csv", *FP32]
        for cmd in (script, fp32):  # the caches filled, as on a second run
            run(cmd, env)
        runs = {"script": run(script, env), "fp32": run(fp32, env)}
        truth = labels(data / "digits" / domain / "test.csv")
        got = {name: labels(work / f"{domain}_{name}.csv") for name in runs}
        for name, r in runs.items():
            r["accuracy_test"] = sum(got[name][k] == v for k, v in truth.items()) / len(truth)
        same = sum(got["script"][k] == v for k, v in got["fp32"].items())
        runs["script"]["agreement"] = same / len(got["fp32"])
        runs["speedup"] = runs["fp32"]["seconds"] / runs["script"]["seconds"]
        out[domain] = runs
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path("/tmp/hw2rt-assignment-jobs"))
    p.add_argument("--face-steps", type=int, default=50,
                   help="steps run per face job (below 50: extrapolated)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--jobs", default="digits,faces")
    args = p.parse_args()
    from hw2rt.device import cpu_flags, cpu_name
    from hw2rt.engines.auto import cpu_kind

    env = {**os.environ}
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="minutes"), "cpu": cpu_name(),
              "cpu_kind": cpu_kind(), "cpu_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
              "argv": sys.argv[1:]}
    for job in args.jobs.split(","):
        work = args.work / job
        work.mkdir(parents=True, exist_ok=True)
        if job == "faces":
            result[job] = faces(work, env, args.face_steps, args.size)
        elif job == "digits":
            result[job] = digits(work, env)
        elif job == "dann":
            result[job] = dann(work, env)
        else:
            raise SystemExit(f"unknown job {job!r}: choose from digits, faces, dann")
        print(json.dumps({job: result[job]}, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
