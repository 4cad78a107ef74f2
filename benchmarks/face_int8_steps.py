"""Where int8 breaks the face job: the face loop (DDIM 50, eta 0) in fp32 with int8 at one step only.

    PYTHONPATH=. .venv/bin/python benchmarks/face_int8_steps.py [--size 32] [--images 10] [--threads 2]
        [--backend openvino|ort] [--steps all|0,10,49] [--json out.json]

The bundled face UNet; the reference is ONNX Runtime fp32 over the whole loop. Each trial runs the same
loop on the same noise (seeded), with the int8 engine (`--backend`, the QDQ graph export/int8.py
calibrates on the face loop) at the listed step indices and the reference at every other step, and grades
the images as the face job does (min-max to uint8, MSE on the 0-255 scale against the reference's
images; the gate is 0.3). Also the whole loop in int8, and in bf16 (openvino, where the CPU has bf16) for
scale. If int8 at any single step already costs the whole budget, no schedule of int8 steps and fp32
steps can pass it.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hw2rt.engines.open import open_engine
from hw2rt.engines.openvino import has_bf16
from hw2rt.io import to_uint8_minmax
from hw2rt.runtime import jobs
from hw2rt.runtime.schedules import FACE

STEPS = 50


class OneStepInt8:
    """The reference engine, except at the timesteps in `int8_at`: the int8 engine (the face loop calls
    the denoiser once per step with one timestep for the whole batch)."""

    def __init__(self, reference, int8, int8_at):
        self.reference, self.int8, self.int8_at = reference, int8, set(int8_at)
        self.device = reference.device

    def __call__(self, x, t):
        return (self.int8 if int(t[0]) in self.int8_at else self.reference)(x, t)


def images(denoiser, noise) -> np.ndarray:
    out = jobs.sample_faces(denoiser, noise, steps=STEPS, batch_size=len(noise), progress=False)
    return np.stack([to_uint8_minmax(x).astype(np.float64) for x in out])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--images", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", choices=["openvino", "ort"], default="openvino")
    ap.add_argument("--steps", default="all", help="step indices (0 = the first, t=981) or 'all'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    timesteps = FACE.timesteps(STEPS)
    indices = range(STEPS) if args.steps == "all" else [int(i) for i in args.steps.split(",")]
    seeded = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.images, 3, args.size, args.size, generator=seeded)
    reference = open_engine("face_unet", backend="ort", precision="fp32", threads=args.threads)
    int8 = open_engine("face_unet", backend=args.backend, precision="int8", threads=args.threads)
    scale = {f"every step {args.backend} int8": int8}
    if has_bf16():  # bf16 hardware (AVX512-BF16, AMX)
        scale["every step openvino bf16"] = open_engine("face_unet", backend="openvino", precision="bf16",
                                                        threads=args.threads)
    expected = images(reference, noise)

    def mse(denoiser) -> float:
        return float(((images(denoiser, noise) - expected) ** 2).mean())

    t0 = time.perf_counter()
    rows = [{"trial": trial, "image_mse_255": mse(engine)} for trial, engine in scale.items()]
    for row in rows:
        print(f"{row['trial']}: image MSE {row['image_mse_255']:.3f}", flush=True)
    for i in indices:
        t = timesteps[i]
        row = {"trial": f"int8 at step {i} only", "step": i, "t": t,
               "image_mse_255": mse(OneStepInt8(reference, int8, [t]))}
        rows.append(row)
        print(f"step {i} (t={t}): image MSE {row['image_mse_255']:.3f}", flush=True)
    single = [r["image_mse_255"] for r in rows if "step" in r]
    summary = {"size": args.size, "images": args.images, "backend": args.backend, "seed": args.seed,
               "lowest_single_step_mse": min(single), "median_single_step_mse": float(np.median(single)),
               "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    print(f"one int8 step: lowest image MSE {min(single):.3f}, median {np.median(single):.3f} "
          f"(gate 0.3) over {len(single)} positions")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
