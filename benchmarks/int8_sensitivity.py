"""Which blocks of the digit UNet tolerate int8: quantize one block at a time (the rest fp32) and grade
the digits, to choose `export/int8.py`'s default exclusions; also everything int8, and the default.

    PYTHONPATH=. .venv/bin/python benchmarks/int8_sensitivity.py [--digits 100] [--trials everything,default]
        [--weights 64|127] [--json out.json]

The bundled digit model (or --checkpoint), calibrated once on its own guided DDIM loop
(runtime/calibration.py), graded by the bundled grader on the gate's loop (DDIM 50, eta 1, w 2) against
the torch fp32 digits of the same seeds (task.py); per-call time: ORT, `--threads` (1), batch 40 (one
guided call of 20 digits), median of 7. Prints a markdown table. `--weights 64` grades the graphs an x86
CPU without VNNI gets (export/int8.py: their integer sums are exact on every CPU, so this CPU grades them
as that one would run them); the default is this CPU's range.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hw2rt.bench.measure import side_by_side
from hw2rt.checkpoints import load_model, resolve_checkpoint
from hw2rt.engines import OrtEngine, TorchEngine
from hw2rt.export import export_onnx
from hw2rt.export.int8 import KEEP_FP32, quantize_int8
from hw2rt.models import get_spec
from hw2rt.runtime.calibration import calibration_recipe, record_calibration
from hw2rt.verify.task import digit_agreement, graded_digits

BLOCKS = ("init_conv", "down1", "down2", "timeembed1", "timeembed2", "contextembed1", "contextembed2", "up0",
          "up1", "up2", "out")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--digits", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch and ORT threads (timings: 1)")
    ap.add_argument("--trials", default=None, help="comma list: everything, default, and block names "
                                                    "(default: all of them)")
    ap.add_argument("--weights", type=int, choices=[64, 127], default=None,
                    help="the int8 weights' range (default: this CPU's, export/int8.py)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_checkpoint(args.checkpoint, "digit_unet")
    net, _, _ = load_model(path, "digit_unet")
    reference = TorchEngine(net, "digit_unet")
    t0 = time.perf_counter()
    ref_digits = graded_digits(reference, args.digits)
    recipe = calibration_recipe("digit_unet")
    feeds = record_calibration(reference, recipe)
    timing = get_spec("digit_unet").example_inputs(40, seed=1)
    trials = [("everything int8", ()), ("default exclusions", KEEP_FP32["digit_unet"])]
    trials += [(f"only {b} int8", tuple(f"/{o}/" for o in BLOCKS if o != b)) for b in BLOCKS]
    if args.trials:
        wanted = args.trials.split(",")
        names = {"everything int8": "everything", "default exclusions": "default"}
        trials = [t for t in trials if names.get(t[0], t[0].removeprefix("only ").removesuffix(" int8"))
                  in wanted]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(net, "digit_unet", Path(tmp) / "fp32.onnx")
        ort32 = OrtEngine(fp32, threads=args.threads)
        base = side_by_side({"fp32": lambda: ort32.run(timing)}, 7, "cpu")["fp32"]["median_ms"]
        for label, keep in trials:
            out = quantize_int8(fp32, Path(tmp) / "int8.onnx", feeds, keep_fp32=keep, calibration=recipe,
                                weights=args.weights)
            engine = OrtEngine(out, threads=args.threads)
            task = digit_agreement(reference, engine, args.digits, reference_digits=ref_digits)
            ms = side_by_side({"int8": lambda e=engine: e.run(timing)}, 7, "cpu")["int8"]["median_ms"]
            engine.close()
            rows.append({"trial": label, "keep_fp32": list(keep), "accuracy": task["accuracy"]["candidate"],
                         "reference_accuracy": task["accuracy"]["reference"],
                         "drop_points": task["accuracy_drop_points"], "agreement": task["agreement"],
                         "image_mse_255": task["image_mse_255"], "ms_per_call": ms, "ort_fp32_ms": base})
            print(f"{label}: accuracy {rows[-1]['accuracy']:.3f} (drop {task['accuracy_drop_points']:+.1f}), "
                  f"agreement {task['agreement']:.3f}, image MSE {task['image_mse_255']:.1f}, {ms:.1f} ms "
                  f"({base / ms:.2f}x ORT fp32)", flush=True)
    print(f"\n{args.digits} digits, reference accuracy {rows[0]['reference_accuracy']:.3f}; "
          f"ORT fp32 {base:.1f} ms/call; {time.perf_counter() - t0:.0f} s\n")
    print("| trial | accuracy | drop (points) | agreement | image MSE | ms/call | x ORT fp32 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trial']} | {r['accuracy']:.3f} | {r['drop_points']:+.1f} | {r['agreement']:.3f} | "
              f"{r['image_mse_255']:.1f} | {r['ms_per_call']:.1f} | {base / r['ms_per_call']:.2f} |")
    if args.json:
        report = {"checkpoint": str(path), "digits": args.digits, "weights": args.weights, "rows": rows}
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
