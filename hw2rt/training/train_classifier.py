"""The assignment's LeNet grader (DigitClassifier), trained on an MNIST-M-layout domain.

The user normally brings the assignment's `Classifier.pth`; this trainer makes a stand-in
grader (and a `Classifier.pth` in the assignment's format, for compatibility tests).
Cross-entropy on logits, AdamW; training images shifted by up to `max_shift` pixels (random,
per image); the best epoch by validation accuracy is exported.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from hw2rt.data.layout import DigitsDataset, resolve_digit_domain
from hw2rt.data.synth import stand_in_note
from hw2rt.io import atomic_path
from hw2rt.models.digit_classifier import DigitClassifier
from hw2rt.models.predict import dataset_accuracy
from hw2rt.training.batches import EpochShuffle, effective_batch, random_shift, steps_per_epoch, to_unit
from hw2rt.training.loop import Task, export_model, fit, start_run

EXPORT_NAME = "digit_classifier.safetensors"
ASSIGNMENT_NAME = "Classifier.pth"


def _cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def write_assignment_classifier(net: nn.Module, path, optimizer_state: dict | None = None):
    """`Classifier.pth` as the assignment ships it: {"state_dict": ..., "optimizer": ...}, fp32 on the CPU
    (so a plain `torch.load` opens it on a machine without CUDA)."""
    sd = {k: v.float() if v.is_floating_point() else v for k, v in _cpu(net.state_dict()).items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": sd, "optimizer": _cpu(optimizer_state or {})}, tmp)


def train_classifier(
    data_dir,
    out_dir,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    max_shift: int = 2,
    assignment_pth: bool = True,
    **run,
) -> dict:
    """Train the LeNet grader on `data_dir` (a digit domain, or a hw2_data root: digits/mnistm).
    Writes `<out_dir>/digit_classifier.safetensors` and, with `assignment_pth`, `<out_dir>/Classifier.pth`.
    `run`: `fit`'s options (resume, overwrite, progress, log_every, save_every, on_step)."""
    dev, prec = start_run(device, precision, seed)
    domain = resolve_digit_domain(data_dir)
    train, val = DigitsDataset(domain, "train"), DigitsDataset(domain, "val")
    images, labels = train.images.to(dev), train.labels.to(dev)
    n = len(labels)
    b = effective_batch(n, batch_size)
    spe = steps_per_epoch(n, b)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batch_at = EpochShuffle(n, b, seed, spe, dev)

    def loss_fn(step: int, part):
        idx = batch_at(step)
        x = part.of(random_shift(to_unit(images[idx]), max_shift, part.generator))
        return F.cross_entropy(model(x).float(), part.of(labels[idx])), {}

    def evaluate(module):
        return {"val_acc": dataset_accuracy(module, val.images, val.labels)}

    config = {"model": {}, "batch_size": b, "max_shift": max_shift, "lr": lr, "weight_decay": weight_decay,
              "data": str(domain), "n_images": n, "seed": seed}
    note = stand_in_note(domain)
    meta = {"data_dir": str(domain), "seed": seed, "lr": lr, "batch_size": b, "max_shift": max_shift,
            "trainer": "hw2rt train classifier", **({"data_note": note} if note else {})}

    def export(module, summary):
        out = Path(out_dir)
        best = summary["best"] or {}
        paths = export_model(module, "digit_classifier", out / EXPORT_NAME, meta, summary,
                             val_acc=best.get("value"), best_epoch=best.get("epoch"))
        if assignment_pth:
            paths["assignment_pth"] = out / ASSIGNMENT_NAME
            write_assignment_classifier(module, paths["assignment_pth"], opt.state_dict())
        return paths

    task = Task(
        kind="classifier", model=model, optimizer=opt, loss_fn=loss_fn, total_steps=epochs * spe,
        steps_per_epoch=spe, batch_size=b, config=config, export=export,
        resume_keys=("batch_size", "data", "n_images"), evaluate=evaluate, best_key="val_acc",
        summary_extra={"data": str(domain), "n_images": n, "n_val": len(val), "data_note": note},
    )
    return fit(task, out_dir, device=dev, precision=prec, seed=seed, **run)
