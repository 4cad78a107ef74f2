"""The assignment's jobs around an engine: noise folder -> faces, digits per class, report figures.

A job sees only engines (`engine.run(feeds) -> outputs`, DESIGN.md); the samplers see only
the denoiser callables built here. Files are written atomically; a tqdm bar tracks the steps.
"""
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hw2rt.errors import Hw2rtError
from hw2rt.io import (
    atomic_path,
    mse_255,
    read_image,
    read_noise_dir,
    to_uint8_minmax,
    to_uint8_signed,
    write_png,
)
from hw2rt.runtime.ddim import ddim_sample
from hw2rt.runtime.ddpm import ddim_sample_guided, ddim_timesteps_for_ddpm, ddpm_sample, guided_denoiser
from hw2rt.runtime.images import make_grid
from hw2rt.runtime.interpolate import interpolate
from hw2rt.runtime.schedules import DDPM_T, ddim_timesteps


def face_denoiser(engine):
    return lambda x, t: engine.run({"x": x, "t": t})["eps"]


def digit_model_fn(engine):
    return lambda x, c, t, mask: engine.run({"x": x, "c": c, "t": t, "mask": mask})["eps"]


def check_ddim_args(steps: int, etas) -> None:
    """Refuse a step count the timestep rule cannot serve, or a negative eta, before any work."""
    try:
        ddim_timesteps(steps)
    except (ValueError, TypeError) as exc:
        raise Hw2rtError(f"--steps {steps}: {exc}") from None
    check_etas(etas)


def check_etas(etas) -> None:
    """Refuse a negative (or NaN) eta before any work."""
    bad = [e for e in etas if not e >= 0]
    if bad:
        raise Hw2rtError(f"--eta must be >= 0 (got {bad[0]:g})")


def sample_faces(engine, x: torch.Tensor, *, steps=50, eta=0.0, seeds=None, batch_size=10, desc="ddim", progress=True):
    """DDIM over `x` [N,3,H,W] in chunks of `batch_size`; image i's eta-noise comes from seeds[i] alone."""
    check_ddim_args(steps, [eta])
    seeds = list(seeds) if seeds is not None else list(range(len(x)))
    outs = []
    with tqdm(total=-(-len(x) // batch_size) * steps, desc=desc, unit="step", disable=not progress) as bar:
        for i in range(0, len(x), batch_size):
            chunk = x[i:i + batch_size].to(engine.device)  # the loop runs where the engine runs
            outs.append(ddim_sample(face_denoiser(engine), chunk, steps=steps, eta=eta,
                                    seeds=seeds[i:i + batch_size] if eta > 0 else None,
                                    callback=lambda *_: bar.update()).cpu())
    return torch.cat(outs)


def face_job(engine, noise_dir, out_dir, *, steps=50, eta=0.0, batch_size=10, seed=0, gt_dir=None, progress=True):
    """`NN.pt` -> `NN.png` (HW2 naming and min-max normalisation); with `gt_dir`, the graded MSE."""
    names, x = read_noise_dir(noise_dir)
    if gt_dir is not None:
        gt = {n: read_image(Path(gt_dir) / f"{n}.png") for n in names}  # fail before sampling, not after
    start = time.perf_counter()
    images = sample_faces(engine, x, steps=steps, eta=eta, seeds=[seed + i for i in range(len(names))],
                          batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    arrays = [to_uint8_minmax(img) for img in images]
    for name, arr in zip(names, arrays):
        write_png(arr, out_dir / f"{name}.png")
    summary = {"images": len(names), "out_dir": str(out_dir), "seconds": seconds, "images_per_s": len(names) / seconds}
    if gt_dir is not None:
        per_image = {}
        for name, arr in zip(names, arrays):
            if gt[name].shape != arr.shape:
                raise Hw2rtError(f"{Path(gt_dir) / (name + '.png')}: size {gt[name].shape[:2]} differs from the "
                                 f"generated {arr.shape[:2]}")
            per_image[name] = mse_255(arr, gt[name])
        summary["mse"] = {"per_image": per_image, "mean": float(np.mean(list(per_image.values())))}
        with atomic_path(out_dir / "mse.json") as tmp:
            tmp.write_text(json.dumps(summary["mse"], indent=2))
    return summary


def eta_grid(engine, noise_dir, grid_path, etas, *, rows=4, steps=50, batch_size=10, seed=0, progress=True):
    """The report grid: the first `rows` noises (rows) x `etas` (columns)."""
    check_ddim_args(steps, etas)
    names, x = read_noise_dir(noise_dir)
    x = x[:rows]
    batch = x.repeat_interleave(len(etas), dim=0)  # row-major: noise, then eta
    columns = []
    for j, eta in enumerate(etas):
        idx = list(range(j, len(batch), len(etas)))
        columns.append(sample_faces(engine, batch[idx], steps=steps, eta=eta, seeds=[seed + i for i in range(len(x))],
                                    batch_size=batch_size, desc=f"eta={eta:g}", progress=progress))
    tiles = [to_uint8_minmax(columns[j][i]) for i in range(len(x)) for j in range(len(etas))]
    write_png(make_grid(tiles, ncol=len(etas)), grid_path)
    return {"grid": str(grid_path), "rows": names[:rows], "etas": list(etas)}


def interp_job(engine, noise_dir, out_path, *, pair=("00", "01"), modes=("slerp", "lerp"), steps=50, batch_size=11,
               progress=True):
    """One row of 11 images (alpha = 0, 0.1, ..., 1) per interpolation mode."""
    names, x = read_noise_dir(noise_dir)
    missing = [p for p in pair if p not in names]
    if missing:
        raise Hw2rtError(f"{noise_dir}: no noise file {missing[0]}.pt for --pair")
    x0, x1 = x[names.index(pair[0])][None], x[names.index(pair[1])][None]
    tiles = []
    for mode in modes:
        imgs = sample_faces(engine, interpolate(x0, x1, 11, mode), steps=steps, batch_size=batch_size, desc=mode,
                            progress=progress)
        tiles += [to_uint8_minmax(img) for img in imgs]
    write_png(make_grid(tiles, ncol=11), out_path)
    return {"out": str(out_path), "pair": list(pair), "modes": list(modes)}


def digit_job(engine, out_dir, *, per_digit=100, w=2.0, sampler="ancestral", steps=1000, eta=0.0, seed=0,
              batch_size=250, grid_path=None, frames_path=None, progress=True):
    """`{d}_{i:03d}.png` for d = 0..9, i = 1..per_digit; the 10x10 grid; six frames of the first "0".

    sampler "ancestral": the assignment's DDPM with T = `steps` (the T the model was trained with);
    "ddim": `steps` DDIM steps over the T = 1000 schedule (the fast path on a CPU); eta = 0 is
    deterministic, eta = 1 draws fresh noise every step as the ancestral sampler does, over fewer steps.
    """
    if per_digit < 1:
        raise Hw2rtError(f"--per-digit must be >= 1 (got {per_digit})")
    check_etas([eta])
    if sampler == "ancestral":
        if eta != 0:
            raise Hw2rtError("--eta applies to --sampler ddim (the ancestral sampler always draws fresh noise)")
        timesteps = list(range(steps, 0, -1))
    elif sampler == "ddim":
        try:
            timesteps = ddim_timesteps_for_ddpm(steps, DDPM_T)
        except ValueError as exc:
            raise Hw2rtError(f"--steps {steps}: {exc}") from None
    else:
        raise Hw2rtError(f"unknown sampler {sampler!r}: ancestral or ddim")
    T = steps if sampler == "ancestral" else DDPM_T
    labels = torch.arange(10).repeat_interleave(per_digit)
    names = [f"{d}_{i:03d}.png" for d in range(10) for i in range(1, per_digit + 1)]
    # One generator per image draws its starting noise and then every z: results do not depend on batching.
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + k) for k in range(len(labels))]
    x_T = torch.cat([torch.randn(1, 3, 28, 28, generator=g) for g in gens])
    keep = {timesteps[round(k * (len(timesteps) - 1) / 5)] for k in range(6)}  # six frames, first and last included
    frames = []
    denoiser = guided_denoiser(digit_model_fn(engine), w, T)
    start = time.perf_counter()
    outs = []
    with tqdm(total=-(-len(labels) // batch_size) * len(timesteps), desc=sampler, unit="step",
              disable=not progress) as bar:
        for i in range(0, len(labels), batch_size):
            def callback(step, t, x, first=(i == 0)):
                bar.update()
                if first and t in keep:  # image 0 is the first "0"
                    frames.append(to_uint8_signed(x[0]))
            x, c = x_T[i:i + batch_size].to(engine.device), labels[i:i + batch_size].to(engine.device)
            if sampler == "ancestral":
                out = ddpm_sample(denoiser, x, c, T=T, seeds=gens[i:i + batch_size], callback=callback)
            else:
                out = ddim_sample_guided(denoiser, x, c, steps=steps, T=T, eta=eta, seeds=gens[i:i + batch_size],
                                         callback=callback)
            outs.append(out.cpu())
    seconds = time.perf_counter() - start
    images = [to_uint8_signed(img) for img in torch.cat(outs)]
    out_dir = Path(out_dir)
    for name, arr in zip(names, images):
        write_png(arr, out_dir / name)
    summary = {"images": len(names), "out_dir": str(out_dir), "seconds": seconds, "images_per_s": len(names) / seconds,
               "w": w, "sampler": sampler, "steps": len(timesteps), "T": T, "eta": eta}
    if grid_path is not None:
        cols = min(10, per_digit)
        write_png(make_grid([images[d * per_digit + j] for d in range(10) for j in range(cols)], ncol=cols), grid_path)
        summary["grid"] = str(grid_path)
    if frames_path is not None:
        write_png(make_grid(frames, ncol=len(frames)), frames_path)
        summary["frames"] = str(frames_path)
        summary["frame_timesteps"] = sorted(keep, reverse=True)
    return summary


def load_digit_images(paths, size: int = 28) -> tuple[torch.Tensor, int]:
    """Images -> float [N,3,size,size] in [0,1] (grayscale repeated); other sizes resized bilinearly.

    Returns the batch and how many images needed resizing, so a caller can say so.
    """
    from PIL import Image

    arrays, resized = [], 0
    for p in paths:
        a = read_image(p)
        if a.shape[:2] != (size, size):
            a = np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR))
            resized += 1
        arrays.append(a)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return x, resized


def classify_job(engine, images_dir, out_csv, *, batch_size=512, features_path=None, progress=True):
    """The assignment's DANN inference: `image_name,label` for every image of the folder."""
    from hw2rt.io import list_images, write_labels_csv

    paths = list_images(images_dir)
    start = time.perf_counter()
    x, resized = load_digit_images(paths)
    labels, feats = [], []
    for i in tqdm(range(0, len(x), batch_size), desc="classify", unit="batch", disable=not progress):
        out = engine.run({"x": x[i:i + batch_size]})
        labels.append(out["log_probs"].argmax(1).cpu())
        feats.append(out["features"].float().cpu())
    labels = torch.cat(labels).tolist()
    seconds = time.perf_counter() - start
    write_labels_csv(out_csv, [(p.name, y) for p, y in zip(paths, labels)])
    summary = {"images": len(paths), "out": str(out_csv), "resized": resized, "seconds": seconds,
               "images_per_s": len(paths) / seconds}
    if features_path is not None:
        with atomic_path(features_path) as tmp, open(tmp, "wb") as f:
            np.savez(f, names=np.array([p.name for p in paths]), features=torch.cat(feats).numpy(),
                     labels=np.array(labels))
        summary["features"] = str(features_path)
    return summary
