"""Task-level agreement: does a candidate engine do the assignment's job as well as the torch fp32 reference?

Image MSE (parity.py) is the right budget while the candidate computes nearly the same numbers; when it
cannot (reduced precision, int8), what matters is the task's own grade:

- digits: the digit job's images from both engines (same seeds, same sampler), graded by the grader
  `hw2rt eval-digits` uses; the labels' agreement, both accuracies and the image MSE are reported.
- classifiers (dann, digit_classifier): the `classify` job's labels on an image folder; with a labels
  CSV, both accuracies.

Choices: the images are exactly what the digit job writes for `--per-digit n/10` (its label order and
per-image generators; hence N is a multiple of 10), graded as the uint8 tensors it saves (PNG is lossless,
so that is what `eval-digits` reads back). Labels come from `jobs.classify_job` itself, run into a
temporary CSV. Pass is an accuracy drop (reference minus candidate, in points, from the counts) within
the budget; a candidate more accurate than the reference passes.
"""
import tempfile
from pathlib import Path

import numpy as np
import torch

from hw2rt.checkpoints import resolve_checkpoint
from hw2rt.errors import Hw2rtError
from hw2rt.evaluate import grade_digits
from hw2rt.io import list_images, mse_255, read_labels_csv, to_uint8_signed
from hw2rt.runtime import jobs

BUDGETS = {"digit_unet": {"accuracy_drop_points": 1.0}, "dann": {"accuracy_drop_points": 0.5},
           "digit_classifier": {"accuracy_drop_points": 0.5}}


def _check_pair(reference, candidate, models):
    if reference.model not in models or candidate.model != reference.model:
        raise Hw2rtError(f"task agreement needs two {' or '.join(models)} engines, "
                         f"got {reference.model} and {candidate.model}")


def check_task(model: str, task):
    """`--task` as `model` takes it, checked before any work: digit_unet a number of digits (int, a
    multiple of 10: the digit job writes as many of each class), dann / digit_classifier an image folder."""
    if model == "face_unet":
        raise Hw2rtError("--task: face_unet has no task grade (its images are graded by image MSE)")
    if model == "digit_unet":
        n = int(task) if str(task).isdigit() else 0
        if n < 10 or n % 10:
            raise Hw2rtError(f"--task {task}: the number of digits must be a positive multiple of 10 "
                             "(the digit job writes as many of each class)")
        return n
    if not Path(task).is_dir():
        raise Hw2rtError(f"--task {task}: not an image folder")
    return Path(task)


def _drop(correct_ref: int, correct_cand: int, n: int) -> float:
    return 100.0 * (correct_ref - correct_cand) / n


def graded_digits(engine, n: int, *, seed=0, sampler="ddim", steps=50, eta=1.0, w=2.0, clip=None, grader=None,
                  batch_size=250, progress=False) -> dict:
    """`n` digits (a multiple of 10: n/10 of each class, as `hw2rt ddpm --per-digit n/10` writes them)
    from `engine`, as uint8 images, graded by `grader` (a checkpoint path, bundled name or module;
    default: the bundled grader, as `eval-digits`): {"images", "predictions", "correct", "classifier",
    "settings"}."""
    check_task("digit_unet", n)
    plan = jobs.digit_plan(sampler, steps, eta=eta, w=w, clip=clip)
    labels = torch.arange(10).repeat_interleave(n // 10)  # the digit job's order: 0_001 .. 9_{n/10}
    grader = grader if isinstance(grader, torch.nn.Module) else resolve_checkpoint(grader, "digit_classifier")
    out = jobs.sample_digits(engine, labels, plan, seed=seed, batch_size=batch_size, progress=progress)
    images = [to_uint8_signed(img) for img in out]  # exactly what the digit job saves
    u8 = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    settings = {"n": n, "seed": seed, "sampler": sampler, "steps": len(plan.timesteps), "eta": eta, "w": w,
                "x0_clip": plan.clip}
    return {"images": images, **grade_digits(u8, labels, grader), "settings": settings}


def digit_agreement(reference, candidate, n: int, *, seed=0, sampler="ddim", steps=50, eta=1.0, w=2.0,
                    clip=None, grader=None, batch_size=250, progress=False,
                    reference_digits: dict | None = None) -> dict:
    """`graded_digits` of both digit_unet engines (`reference_digits`: the reference's, already made
    with the same settings, e.g. once for many candidates). agreement: share of images the grader
    labels the same on both; passed: accuracy drop <= BUDGETS["digit_unet"]."""
    _check_pair(reference, candidate, ("digit_unet",))
    kw = {"seed": seed, "sampler": sampler, "steps": steps, "eta": eta, "w": w, "clip": clip,
          "grader": grader, "batch_size": batch_size, "progress": progress}
    cand = graded_digits(candidate, n, **kw)
    ref = reference_digits or graded_digits(reference, n, **kw)
    if ref["settings"] != cand["settings"]:
        raise ValueError(f"reference digits of other settings: {ref['settings']} vs {cand['settings']}")
    agreement = int((ref["predictions"] == cand["predictions"]).sum()) / n
    drop = _drop(ref["correct"], cand["correct"], n)
    budget = BUDGETS["digit_unet"]
    return {"task": "digits", **cand["settings"], "grader": ref["classifier"], "agreement": agreement,
            "accuracy": {"reference": ref["correct"] / n, "candidate": cand["correct"] / n},
            "accuracy_drop_points": drop,
            "image_mse_255": float(np.mean([mse_255(a, b) for a, b in zip(ref["images"], cand["images"])])),
            "budget": budget, "passed": drop <= budget["accuracy_drop_points"]}


def _job_labels(engine, images_dir, batch_size) -> dict:
    """{image name: label} as `hw2rt classify` writes them for `images_dir`."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "labels.csv"
        jobs.classify_job(engine, images_dir, csv, batch_size=batch_size, progress=False)
        return dict(read_labels_csv(csv))


def label_agreement(reference, candidate, images_dir, *, labels_csv=None, batch_size=512) -> dict:
    """The classify job's labels from both engines (dann or digit_classifier) on every image of
    `images_dir`; agreement: the share of images labelled the same.

    labels_csv: an `image_name,label` CSV (e.g. hw2_data/digits/usps/test.csv for the folder
    usps/data) naming images of the folder; the accuracies are over the images it lists.
    passed: with labels, accuracy drop <= BUDGETS[model] points; without, at most that many points of
    the labels may flip, i.e. agreement >= 1 - budget / 100.
    """
    _check_pair(reference, candidate, ("dann", "digit_classifier"))
    budget = BUDGETS[reference.model]
    truth = None
    if labels_csv is not None:  # refused before any work
        names = {p.name for p in list_images(images_dir)}
        truth = dict(read_labels_csv(labels_csv))
        if not truth:
            raise Hw2rtError(f"{labels_csv}: the CSV lists no images")
        for name, label in truth.items():
            if name not in names:
                raise Hw2rtError(f"{labels_csv}: names {name}, which is not an image of {images_dir}")
            if not 0 <= label <= 9:
                raise Hw2rtError(f"{labels_csv}: label {label} of {name} is outside 0..9")
    ref, cand = (_job_labels(e, images_dir, batch_size) for e in (reference, candidate))
    agreement = sum(ref[k] == cand[k] for k in ref) / len(ref)
    report = {"task": "labels", "model": reference.model, "images": str(images_dir), "n": len(ref),
              "agreement": agreement, "accuracy": None, "accuracy_drop_points": None, "budget": budget}
    if truth is None:
        return {**report, "passed": agreement >= 1 - budget["accuracy_drop_points"] / 100}
    hits = [sum(labels[k] == y for k, y in truth.items()) for labels in (ref, cand)]
    drop = _drop(*hits, len(truth))
    return {**report, "labels_csv": str(labels_csv), "n_labelled": len(truth),
            "accuracy": {"reference": hits[0] / len(truth), "candidate": hits[1] / len(truth)},
            "accuracy_drop_points": drop, "passed": drop <= budget["accuracy_drop_points"]}


def format_task(report: dict) -> str:
    """One or two readable lines of a `digit_agreement` or `label_agreement` report."""
    verdict = "PASS" if report["passed"] else "FAIL"
    limit = report["budget"]["accuracy_drop_points"]
    if report["task"] == "digits":
        head = (f"task digits: {report['n']} digits, {report['sampler']} {report['steps']} steps, "
                f"eta {report['eta']:g}, w {report['w']:g}, seed {report['seed']}, grader {report['grader']}")
    else:
        head = f"task labels ({report['model']}): {report['n']} images of {report['images']}"
    line = f"  agreement {report['agreement']:.4f}"
    if report["accuracy"] is not None:
        acc = report["accuracy"]
        line += (f"  accuracy {acc['reference']:.4f} -> {acc['candidate']:.4f} "
                 f"(drop {report['accuracy_drop_points']:+.2f} points, budget {limit:g})")
    else:
        line += f" (no labels: budget {1 - limit / 100:.3f})"
    if "image_mse_255" in report:
        line += f"  image MSE {report['image_mse_255']:.4g}"
    return f"{head}\n{line}  {verdict}"
