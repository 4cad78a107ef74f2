"""Evaluation: the assignment's digit grading (`eval-digits`) and the DANN t-SNE figures.

`digit_accuracy` grades a folder of generated digits the way the assignment does: the label
is the first character of each file name, the image is RGB in [0,1], the grader is the LeNet
of `Classifier.pth` (or any DigitClassifier checkpoint / module).

This module reads data/, models and checkpoints, never training; training never reads it (the
accuracy of a classifier on a uint8 batch, which both need, is `models.predict`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hw2rt.data.images import read_images
from hw2rt.data.layout import DIGIT_SIZE, DigitsDataset, resolve_digit_domain
from hw2rt.data.synth import stand_in_note
from hw2rt.device import usable_device
from hw2rt.errors import Hw2rtError
from hw2rt.io import atomic_path, list_images
from hw2rt.models.predict import predict


def _load_classifier(classifier, device: torch.device) -> tuple[nn.Module, str]:
    if isinstance(classifier, nn.Module):
        return classifier.to(device).eval(), type(classifier).__name__
    from hw2rt.checkpoints import load_model

    net, _, _ = load_model(classifier, "digit_classifier")
    return net.to(device), str(classifier)


def digit_accuracy(images_dir, classifier, *, batch_size: int = 500, device: str = "auto") -> dict:
    """Grade a folder of digit images: per-digit and overall accuracy.

    classifier: a path (the assignment's `Classifier.pth`, a plain state dict, or hw2rt
    safetensors of a digit_classifier) or an nn.Module taking RGB [0,1] [B,3,28,28].
    Every image's name must start with its digit; an image that is not 28x28 (the grader's input)
    is resized by the one resize rule (hw2rt.data.images) and counted in the result's `resized`.
    """
    files = list_images(images_dir)
    labels = []
    for f in files:
        if not f.name[0].isdigit() or not f.name[0].isascii():
            raise Hw2rtError(f"{f}: the file name must start with the digit the image shows "
                             "(the grader's label is the first character, e.g. 3_017.png)")
        labels.append(int(f.name[0]))
    images, resized = read_images(files, DIGIT_SIZE)
    graded = grade_digits(images, torch.tensor(labels), classifier, batch_size=batch_size, device=device)
    del graded["predictions"]
    return {"images_dir": str(images_dir), **graded, "resized": resized}


def grade_digits(images_u8: torch.Tensor, labels: torch.Tensor, classifier, *, batch_size: int = 500,
                 device: str = "auto") -> dict:
    """The grading of `digit_accuracy` on a uint8 [N,3,28,28] batch (what the digit job writes) with its
    true `labels` [N]: {"classifier", "n", "correct", "accuracy", "per_digit", "predictions" (int64 [N])}."""
    dev = usable_device(device)
    net, name = _load_classifier(classifier, dev)
    preds = predict(net, images_u8, batch_size=batch_size, device=dev)
    truth = labels.cpu()
    hit = preds == truth
    per_digit = {}
    for d in range(10):
        sel = truth == d
        n = int(sel.sum())
        c = int(hit[sel].sum())
        per_digit[str(d)] = {"n": n, "correct": c, "accuracy": c / n if n else None}
    return {"classifier": name, "n": len(truth), "correct": int(hit.sum()),
            "accuracy": float(hit.float().mean()), "per_digit": per_digit, "predictions": preds}


def _subsample(n: int, k: int, seed: int, salt: int) -> np.ndarray:
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, salt]).choice(n, size=k, replace=False))


def _save_figure(fig, path: Path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def tsne(
    dann_checkpoint,
    source_dir,
    target_dir,
    out_prefix,
    *,
    n_per_domain: int = 1000,
    split: str = "val",
    perplexity: float = 30.0,
    seed: int = 0,
    device: str = "auto",
    bn_stats: str = "own",
) -> dict:
    """t-SNE of the DANN features (the 512-d CNN output) of both domains' `split` images.

    Writes `<out_prefix>_digit.png` (coloured by class) and `<out_prefix>_domain.png` (coloured
    by domain); up to `n_per_domain` images per domain, a seeded random subset.
    bn_stats: "own": each domain's features under BatchNorm statistics recomputed on that domain's
    training images, as hw2rt's DANN trains (each domain normalised by its own batches);
    "checkpoint": the running statistics stored in the checkpoint, for both domains.
    """
    import matplotlib
    from matplotlib.figure import Figure  # a bare Figure renders with Agg; no pyplot, no GUI backend
    from sklearn.manifold import TSNE

    from hw2rt.checkpoints import load_model
    from hw2rt.models.dann import with_batchnorm_statistics

    if bn_stats not in ("own", "checkpoint"):
        raise Hw2rtError(f"bn_stats {bn_stats!r}: expected own or checkpoint")
    dev = usable_device(device)
    stored, _, _ = load_model(dann_checkpoint, "dann")
    stored = stored.to(dev)
    domains = [resolve_digit_domain(source_dir), resolve_digit_domain(target_dir)]
    feats, digits, dom = [], [], []
    for k, d in enumerate(domains):
        ds = DigitsDataset(d, split)
        net = stored
        if bn_stats == "own":
            net = with_batchnorm_statistics(stored, DigitsDataset(d, "train").images.to(dev))
        idx = torch.from_numpy(_subsample(len(ds), n_per_domain, seed, k))
        with torch.no_grad():
            for i in range(0, len(idx), 1024):
                x = ds.images[idx[i:i + 1024]].to(dev).float().div_(255.0)
                feats.append(net(x)[1].float().cpu())
        digits.append(ds.labels[idx].numpy())
        dom.append(np.full(len(idx), k))
    x = torch.cat(feats).numpy().astype(np.float64)
    digits, dom = np.concatenate(digits), np.concatenate(dom)
    n = len(x)
    if n < 4:
        raise Hw2rtError(f"{source_dir} + {target_dir}: t-SNE needs at least 4 images, found {n}")
    perp = min(perplexity, (n - 1) / 3.0)
    emb = TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto",
               random_state=seed).fit_transform(x)

    out_prefix = Path(out_prefix)
    names = [Path(d).name for d in domains]
    paths = {"digit_png": Path(f"{out_prefix}_digit.png"), "domain_png": Path(f"{out_prefix}_domain.png")}
    note = " [stand-in data]" if (stand_in_note(domains[0]) or stand_in_note(domains[1])) else ""
    stats = ", own BN statistics" if bn_stats == "own" else ""
    title = f"t-SNE of DANN features ({names[0]} -> {names[1]}, {split}{stats}){note}"

    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    for c in range(10):
        sel = digits == c
        ax.scatter(emb[sel, 0], emb[sel, 1], s=4, color=matplotlib.colormaps["tab10"](c), label=str(c))
    ax.legend(markerscale=3, fontsize=8, title="digit", loc="best")
    ax.set_title(f"{title}: by digit")
    ax.set_xticks([])
    ax.set_yticks([])
    _save_figure(fig, paths["digit_png"])

    fig = Figure(figsize=(7, 6))
    ax = fig.add_subplot()
    for k, color in ((0, "tab:blue"), (1, "tab:red")):
        sel = dom == k
        ax.scatter(emb[sel, 0], emb[sel, 1], s=4, color=color, label=f"{['source', 'target'][k]}: {names[k]}")
    ax.legend(markerscale=3, fontsize=8, loc="best")
    ax.set_title(f"{title}: by domain")
    ax.set_xticks([])
    ax.set_yticks([])
    _save_figure(fig, paths["domain_png"])

    return {**{k: str(v) for k, v in paths.items()}, "n_source": int((dom == 0).sum()),
            "n_target": int((dom == 1).sum()), "perplexity": perp, "split": split,
            "source": str(domains[0]), "target": str(domains[1])}
