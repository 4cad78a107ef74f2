"""A narrow FaceUNet as an unconditional DDPM, so hw2rt can bundle a face model that works with
the DDIM sampler of Problem 2 (the assignment's own `UNet.pt` is the user's to bring).

The schedule is Problem 2's: betas = linspace(1e-4, 2e-2, 1000) in float64, abar = cumprod
(`schedules.FACE`, `add_noise`); t uniform in 0..999 passed to the model as the
raw integer timestep; loss = MSE on eps. Images in [-1,1], random horizontal flips.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from hw2rt.data.layout import FacesDataset, resolve_faces_dir
from hw2rt.data.synth import stand_in_note
from hw2rt.errors import Hw2rtError
from hw2rt.models.face_unet import FaceUNet
from hw2rt.runtime.schedules import FACE
from hw2rt.training.batches import EpochShuffle, effective_batch, steps_per_epoch, to_signed
from hw2rt.training.loop import Task, export_model, fit, start_run
from hw2rt.training.train_ddpm import lr_schedule

EXPORT_NAME = "face_unet.safetensors"


def train_face(
    faces_dir,
    out_dir,
    *,
    steps: int = 20000,
    batch_size: int = 64,
    size: int = 32,
    base: int = 32,
    norm_groups: int = 8,
    dropout: float = 0.1,
    lr: float = 2e-4,
    weight_decay: float = 0.0,
    lr_schedule_kind: str = "constant",
    warmup_steps: int = 0,
    ema_decay: float | None = 0.999,
    grad_clip: float | None = 1.0,
    flip: bool = True,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    **run,
) -> dict:
    """Train an unconditional face DDPM on a folder of images (or a hw2_data root: face/faces).
    Writes `<out_dir>/face_unet.safetensors` (fp16 params, config base/norm_groups) and returns the summary.
    `run`: `fit`'s options (resume, overwrite, progress, log_every, save_every, on_step)."""
    if size % 32:
        raise Hw2rtError(f"--size {size}: the face UNet needs a multiple of 32 (five downsamplings)")
    if base < 2 or base % 2 or base % norm_groups:
        raise Hw2rtError(f"--base {base} / --norm-groups {norm_groups}: base must be even and divisible by "
                         "norm_groups (every width is a multiple of base)")
    dev, prec = start_run(device, precision, seed)
    folder = resolve_faces_dir(faces_dir)
    data = FacesDataset(folder, size)
    images = data.images.to(dev)
    n = len(images)
    b = effective_batch(n, batch_size)
    spe = steps_per_epoch(n, b)

    model = FaceUNet(base=base, norm_groups=norm_groups, dropout=dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batch_at = EpochShuffle(n, b, seed, spe, dev)

    def loss_fn(step: int, part):
        g = part.generator
        flips = torch.rand(b, device=dev, generator=g) < 0.5
        t = torch.randint(0, FACE.T, (b,), device=dev, generator=g)
        eps = torch.randn((b, *images.shape[1:]), device=dev, generator=g)
        idx, flips, t, eps = (part.of(v) for v in (batch_at(step), flips, t, eps))
        x0 = to_signed(images[idx])
        if flip:
            x0 = torch.where(flips[:, None, None, None], x0.flip(3), x0)
        x_t = FACE.add_noise(x0, eps, t)
        return F.mse_loss(model(x_t, t).float(), eps), {}

    config = {
        "model": dict(model.config), "size": size, "batch_size": b, "lr": lr, "weight_decay": weight_decay,
        "lr_schedule": lr_schedule_kind, "ema_decay": ema_decay, "flip": flip, "data": str(folder),
        "n_images": n, "seed": seed, "dropout": dropout,
    }
    meta = {"data_dir": str(folder), "seed": seed, "lr": lr, "batch_size": b, "image_size": size,
            "schedule": "linspace(1e-4,2e-2,1000) float64, t raw integer 0..999",
            "ema_decay": ema_decay, "trainer": "hw2rt train face"}
    note = stand_in_note(folder)
    if note:
        meta["data_note"] = note

    def export(module, summary):
        return export_model(module, "face_unet", Path(out_dir) / EXPORT_NAME, meta, summary,
                            final_loss=summary["final_loss"],
                            exported_weights="ema" if ema_decay else "model")

    task = Task(
        kind="face", model=model, optimizer=opt, loss_fn=loss_fn, total_steps=steps, steps_per_epoch=spe,
        batch_size=b, config=config, export=export, resume_keys=("size", "batch_size", "data", "n_images"),
        lr_at=lr_schedule(lr_schedule_kind, lr, steps, warmup_steps), ema_decay=ema_decay,
        grad_clip=grad_clip,
        summary_extra={"data": str(folder), "n_images": n, "base": base, "norm_groups": norm_groups,
                       "size": size, "data_note": note},
    )
    return fit(task, out_dir, device=dev, precision=prec, seed=seed, **run)
