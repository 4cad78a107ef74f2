"""`hw2rt train ...`, `eval-digits` and `tsne`."""
from pathlib import Path

import click

from hw2rt.cli.group import main


def _train_options(f):
    for opt in reversed([
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Run folder: checkpoint.pt, metrics.jsonl, summary.json, the exported model."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True),
        click.option("--lr", type=float, default=None, help="AdamW learning rate (default: the trainer's)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint."),
        click.option("--overwrite", is_flag=True, help="Start over in an --out that holds a run."),
    ]):
        f = opt(f)
    return f


def _train(fn, *args, device, **kwargs):
    """`fn(*args, **kwargs)`, its run folder (the last positional argument) checked first. Under
    torchrun: data parallel, each process on its own GPU (or the CPU), rank 0 reporting."""
    from hw2rt import distributed
    from hw2rt.io import check_outputs
    from hw2rt.training.loop import format_summary

    check_outputs(("--out", args[-1], True))
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    device = distributed.device_for(device)
    with distributed.session(device) as world:
        try:
            summary = fn(*args, device=device, **kwargs)
        except KeyboardInterrupt:
            if world.main:
                click.echo("interrupted: checkpoint saved; continue with --resume", err=True)
            raise SystemExit(130) from None
    if world.main:
        click.echo(format_summary(summary))


@main.group()
def train():
    """Train the HW2 networks on any folder in the assignment's layout (resumable)."""


@train.command("ddpm")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A digit domain folder (data/ + train.csv) or a hw2_data root (digits/mnistm).")
@click.option("--steps", type=click.IntRange(min=1), default=20000, show_default=True)
@click.option("--n-feat", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--ema", type=float, default=0.999, show_default=True, help="EMA decay; 0 turns EMA off.")
@click.option("--cosine", is_flag=True, help="Cosine learning-rate decay instead of a constant rate.")
@_train_options
def train_ddpm_cmd(data, steps, n_feat, ema, cosine, out, seed, batch_size, lr, device, resume, overwrite):
    """Conditional DigitUNet with classifier-free guidance (T = 1000, drop p = 0.1)."""
    from hw2rt.training.train_ddpm import train_ddpm

    _train(train_ddpm, data, out, steps=steps, n_feat=n_feat, ema_decay=ema or None,
           lr_schedule_kind="cosine" if cosine else "constant", seed=seed, batch_size=batch_size, lr=lr,
           device=device, resume=resume, overwrite=overwrite)


@train.command("dann")
@click.option("--source", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Source domain folder.")
@click.option("--target", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Target domain folder.")
@click.option("--mode", type=click.Choice(["source", "dann", "target"]), default="dann", show_default=True,
              help="source: lower bound; dann: adaptation; target: upper bound.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@_train_options
def train_dann_cmd(source, target, mode, epochs, out, seed, batch_size, lr, device, resume, overwrite):
    """DANN (the seed's networks, GRL schedule, AdamW, cosine warm restarts)."""
    from hw2rt.training.train_dann import train_dann

    _train(train_dann, source, target, out, mode=mode, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
           device=device, resume=resume, overwrite=overwrite)


@train.command("classifier")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="An MNIST-M-layout folder or a hw2_data root.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@_train_options
def train_classifier_cmd(data, epochs, out, seed, batch_size, lr, device, resume, overwrite):
    """The LeNet grader; also writes an assignment-format Classifier.pth."""
    from hw2rt.training.train_classifier import train_classifier

    _train(train_classifier, data, out, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr, device=device,
           resume=resume, overwrite=overwrite)


@train.command("face")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A folder of face images or a hw2_data root (face/faces).")
@click.option("--steps", type=click.IntRange(min=1), default=20000, show_default=True)
@click.option("--size", type=click.IntRange(min=32), default=32, show_default=True)
@click.option("--base", type=click.IntRange(min=8), default=32, show_default=True,
              help="FaceUNet width (128 = HW2's).")
@_train_options
def train_face_cmd(data, steps, size, base, out, seed, batch_size, lr, device, resume, overwrite):
    """A reduced-width FaceUNet as an unconditional DDPM (the face schedule; DDIM-ready)."""
    from hw2rt.training.train_face import train_face

    _train(train_face, data, out, steps=steps, size=size, base=base, seed=seed, batch_size=batch_size, lr=lr,
           device=device, resume=resume, overwrite=overwrite)


@main.command("eval-digits")
@click.option("--images", required=True, type=click.Path(path_type=Path),
              help="Folder of {d}_{i:03d}.png digits.")
@click.option("--classifier", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The grader: the assignment's Classifier.pth or an hw2rt checkpoint (default: bundled).")
def eval_digits(images, classifier):
    """The assignment's grading of generated digits: label = first character of the file name."""
    from hw2rt.checkpoints import resolve_checkpoint
    from hw2rt.evaluate import digit_accuracy

    r = digit_accuracy(images, resolve_checkpoint(classifier, "digit_classifier"))
    per = "  ".join(f"{d}:{v['accuracy']:.2f}" for d, v in r["per_digit"].items() if v["n"])
    resized = f"; {r['resized']} resized to 28x28" if r["resized"] else ""
    click.echo(f"accuracy {r['accuracy']:.4f} ({r['correct']}/{r['n']}){resized}\n  per digit  {per}")


@main.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="DANN checkpoint.")
@click.option("--source", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--target", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=str, help="Prefix: PREFIX_digit.png and PREFIX_domain.png.")
@click.option("--n-per-domain", type=click.IntRange(min=10), default=1000, show_default=True)
@click.option("--bn-stats", type=click.Choice(["own", "checkpoint"]), default="own", show_default=True,
              help="own: each domain normalised by BatchNorm statistics of its own training images "
                   "(as hw2rt's DANN trains); checkpoint: the stored running statistics for both.")
def tsne(checkpoint, source, target, out, n_per_domain, bn_stats):
    """t-SNE of the validation features (the CNN's 512-d output), by digit and by domain."""
    from hw2rt.evaluate import tsne as run_tsne
    from hw2rt.io import check_outputs

    check_outputs(("--out", f"{out}_digit.png", False), ("--out", f"{out}_domain.png", False))
    r = run_tsne(checkpoint, source, target, out, n_per_domain=n_per_domain, bn_stats=bn_stats)
    click.echo(f"t-SNE: {', '.join(str(v) for k, v in r.items() if str(v).endswith('.png'))}")



