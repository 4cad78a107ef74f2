"""Problem 3: DANN and its two bounds, with the seed's networks (hw2rt.models.dann).

Modes:
- `source`: label loss on the source domain only (the lower bound);
- `dann`: source label loss + domain loss on source (domain 0) and target (domain 1) images,
  the features reaching the domain classifier through the gradient reversal layer with
  lambda = 2/(1+exp(-10p)) - 1, p = step / total steps;
- `target`: label loss on the (labelled) target domain only (the upper bound).
Losses are NLL on the networks' log-probabilities; AdamW (lr 1e-4, wd 1e-5);
CosineAnnealingWarmRestarts(T_0=2, T_mult=2) stepped once per epoch. After every epoch the
target's validation accuracy is measured and the best epoch's weights are exported, as the
DANNClassifier (feature + label_classifier) in hw2rt safetensors.

BatchNorm and domains (the `dann` mode): the source and the target batch go through the
feature extractor separately, so each is normalised with its own batch statistics, and the
network that is evaluated and exported carries BatchNorm running statistics recomputed on the
target's unlabelled training images (`with_batchnorm_statistics`, AdaBN): at test time the target is
normalised as it was in training. One mixed batch instead (mixed statistics in training and at
test time) measured worse on the stand-ins: MNIST-M-like -> USPS-like target val 0.596 against
0.600 trained on the source alone.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from hw2rt.data.layout import DigitsDataset, resolve_digit_domain
from hw2rt.data.synth import stand_in_note
from hw2rt.errors import Hw2rtError
from hw2rt.models.dann import DANN, DANNClassifier, grad_reverse, grl_lambda, with_batchnorm_statistics
from hw2rt.models.predict import dataset_accuracy
from hw2rt.training.batches import EpochShuffle, effective_batch, steps_per_epoch, to_unit
from hw2rt.training.loop import Task, export_model, fit, start_run

MODES = ("source", "dann", "target")
EXPORT_NAME = "dann.safetensors"


class _LabelHead(torch.nn.Module):
    """DANN viewed as a classifier (first output = class log-probs) for evaluation."""

    def __init__(self, dann: DANN):
        super().__init__()
        self.dann = dann

    def forward(self, x):
        return self.dann.label_classifier(self.dann.feature(x))


def to_classifier(dann: DANN) -> DANNClassifier:
    """The exported network: DANN without its domain classifier."""
    clf = DANNClassifier()
    sd = {k: v for k, v in dann.state_dict().items() if not k.startswith("domain_classifier.")}
    clf.load_state_dict(sd, strict=True)
    return clf


def train_dann(
    source_dir,
    target_dir,
    out_dir,
    *,
    mode: str = "dann",
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    t_0: int = 2,
    t_mult: int = 2,
    eval_split: str = "val",
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    **run,
) -> dict:
    """Train DANN (or a bound) from `source_dir` to `target_dir` (digit domain folders).
    Writes `<out_dir>/dann.safetensors` (the best epoch by target val accuracy); returns the summary.
    `run`: `fit`'s options (resume, overwrite, progress, log_every, save_every, on_step)."""
    if mode not in MODES:
        raise Hw2rtError(f"--mode {mode}: expected one of {', '.join(MODES)}")
    dev, prec = start_run(device, precision, seed)
    src_dir, tgt_dir = resolve_digit_domain(source_dir), resolve_digit_domain(target_dir)
    target_val = DigitsDataset(tgt_dir, eval_split)
    train_src = DigitsDataset(src_dir, "train") if mode in ("source", "dann") else None
    train_tgt = DigitsDataset(tgt_dir, "train") if mode in ("dann", "target") else None
    labelled = train_src if mode != "target" else train_tgt
    xl, yl = labelled.images.to(dev), labelled.labels.to(dev)
    nl = len(yl)
    bl = effective_batch(nl, batch_size)
    spe = steps_per_epoch(nl, bl)
    total = epochs * spe
    if mode == "dann":
        xt = train_tgt.images.to(dev)
        nt = len(xt)
        bt = effective_batch(nt, batch_size)

    model = DANN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=t_0, T_mult=t_mult)
    batch_at = EpochShuffle(nl, bl, seed, spe, dev)
    if mode == "dann":  # the target's own shuffle, cycled when it is the smaller domain
        target_batch_at = EpochShuffle(nt, bt, seed + 7919, spe, dev)

    def loss_fn(step: int, part):
        idx = part.of(batch_at(step))
        x, y = to_unit(xl[idx]), yl[idx]
        if mode != "dann":
            label_loss = F.nll_loss(model.label_classifier(model.feature(x)), y)
            return label_loss, {"label_loss": label_loss.detach()}
        tidx = part.of(target_batch_at(step))
        lam = grl_lambda(step / total)
        features = torch.cat([model.feature(x), model.feature(to_unit(xt[tidx]))])  # per-domain statistics
        label_loss = F.nll_loss(model.label_classifier(features[: len(y)]), y)
        domain_lp = model.domain_classifier(grad_reverse(features, lam))
        domains = torch.cat([torch.zeros(len(y), dtype=torch.long, device=dev),
                             torch.ones(len(tidx), dtype=torch.long, device=dev)])
        domain_loss = F.nll_loss(domain_lp, domains)
        return label_loss + domain_loss, {"label_loss": label_loss.detach(),
                                          "domain_loss": domain_loss.detach(), "grl_lambda": lam}

    def adapted(module):  # the network as it is evaluated and exported
        return with_batchnorm_statistics(module, xt) if mode == "dann" else module

    def evaluate(module):
        net = adapted(module)
        return {"target_val_acc": dataset_accuracy(_LabelHead(net), target_val.images, target_val.labels)}

    config = {
        "model": {}, "mode": mode, "batch_size": bl, "lr": lr, "weight_decay": weight_decay, "t_0": t_0,
        "t_mult": t_mult, "source": str(src_dir), "target": str(tgt_dir), "eval_split": eval_split,
        "n_labelled": nl, "seed": seed,
    }
    note = stand_in_note(src_dir) or stand_in_note(tgt_dir)
    meta = {"mode": mode, "source": str(src_dir), "target": str(tgt_dir), "seed": seed, "lr": lr,
            "batch_size": bl, "trainer": "hw2rt train dann", **({"data_note": note} if note else {}),
            **({"batchnorm_statistics": "target (AdaBN)"} if mode == "dann" else {})}

    def export(module, summary):
        best = summary["best"] or {}
        return export_model(to_classifier(adapted(module)), "dann", Path(out_dir) / EXPORT_NAME, meta,
                            summary, epochs=summary["epochs"], best_epoch=best.get("epoch"),
                            target_val_acc=best.get("value"))

    task = Task(
        kind="dann", model=model, optimizer=opt, loss_fn=loss_fn, total_steps=total, steps_per_epoch=spe,
        batch_size=bl, config=config, export=export,
        resume_keys=("mode", "batch_size", "source", "target", "n_labelled", "t_0", "t_mult"),
        scheduler=scheduler, evaluate=evaluate, best_key="target_val_acc", all_parameters_used=mode == "dann",
        summary_extra={"mode": mode, "source": str(src_dir), "target": str(tgt_dir), "data_note": note,
                       "n_train_labelled": nl, "n_target_val": len(target_val)},
    )
    return fit(task, out_dir, device=dev, precision=prec, seed=seed, **run)
