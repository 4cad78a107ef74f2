"""The `hw2rt` command line: a thin click group over the packages. No logic lives here."""
import json
from pathlib import Path

import click

from hw2rt import options
from hw2rt.bench.runners import RUNNERS
from hw2rt.errors import Hw2rtError


class _Group(click.Group):
    """Turns Hw2rtError into click's one-line `Error: ...` and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Hw2rtError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """hw2rt: fast, validated inference for the HW2 networks (DDPM digits, DDIM faces, DANN)."""


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Choice(options.MODELS), default=None,
              help="The network the file must hold (default: recognise it).")
def inspect(checkpoint, model):
    """Load CHECKPOINT strictly and print which network it holds, its config and size."""
    from hw2rt.checkpoints import file_sha256, load_model

    net, name, config = load_model(checkpoint, model)
    n_params = sum(p.numel() for p in net.parameters())
    click.echo(json.dumps({"file": checkpoint, "model": name, "config": config, "parameters": n_params,
                           "state_dict_entries": len(net.state_dict()), "sha256": file_sha256(checkpoint)},
                          indent=2))


@main.group()
def data():
    """Data helpers: offline stand-ins in the assignment's hw2_data/ layout."""


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create.")
@click.option("--mnist-idx", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder with full MNIST train-images-idx3-ubyte / train-labels-idx1-ubyte (.gz ok).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--n-mnistm", type=click.IntRange(min=1), default=None, help="Default: every source digit.")
@click.option("--n-usps", type=click.IntRange(min=1), default=None, help="Default: all 1,797 optdigits.")
@click.option("--n-svhn", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--n-faces", type=click.IntRange(1, 100), default=100, show_default=True)
@click.option("--noise-size", type=click.IntRange(min=32), default=32, show_default=True,
              help="Noise files are [1,3,S,S]; S must be a multiple of 32 for the face UNet.")
@click.option("--overwrite", is_flag=True, help="Replace a tree made earlier by this command.")
def synth(out, mnist_idx, seed, n_mnistm, n_usps, n_svhn, n_faces, noise_size, overwrite):
    """Build a stand-in hw2_data/ tree from offline sources (deterministic for a seed)."""
    from hw2rt.data.synth import format_summary, synthesize

    if noise_size % 32:
        raise click.BadParameter(f"{noise_size} is not a multiple of 32", param_hint="--noise-size")
    try:
        summary = synthesize(out, seed=seed, mnist_idx=mnist_idx, overwrite=overwrite, noise_size=noise_size,
                             sizes={"mnistm": n_mnistm, "usps": n_usps, "svhn": n_svhn, "faces": n_faces})
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise Hw2rtError(str(exc)) from None
    click.echo(format_summary(summary))


# --- the sampler commands ------------------------------------------------------------------------

PRECISION_HELP = ("fp16: the fp16 graph with fp32 islands (ort, trt; torch on CUDA). bf16: torch only; "
                  "fast only on CPUs/GPUs with native bf16.")


def _engine_options(f):
    """--backend, --precision, --device, --threads: passed to `open_engine` as they are; it validates them."""
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for the engine (default: the library's choice).")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:N or auto (cuda when torch sees a GPU). On cuda, engines run "
                          "behind CUDA graphs.")(f)
    f = click.option("--precision", type=click.Choice(options.PRECISIONS), default="fp32", show_default=True,
                     help=PRECISION_HELP)(f)
    f = click.option("--backend", type=click.Choice(options.BACKENDS), default="auto", show_default=True,
                     help=options.AUTO_BACKEND)(f)
    return f


def _open_engine(model, checkpoint, backend, precision, threads, device, default=None, **dims):
    """The engine a command runs: the one `open_engine`, on the checkpoint (or the bundled default)."""
    from hw2rt.checkpoints import resolve_checkpoint
    from hw2rt.engines import open_engine

    return open_engine(model, resolve_checkpoint(checkpoint, default or model), backend=backend,
                       precision=precision, device=device, threads=threads, dims=dims or None)


def _dims(noise):
    """The face UNet's serving size, from the noise (names, [N,3,H,W]) it will sample."""
    return {"height": noise[1].shape[2], "width": noise[1].shape[3]}


def _report(summary, what):
    rate = f", {summary['images_per_s']:.2f} images/s" if "images_per_s" in summary else ""
    click.echo(f"{what}: wrote {summary.get('images', '')} images to "
               f"{summary.get('out_dir', summary.get('out', ''))}"
               f" in {summary.get('seconds', 0):.1f} s{rate}")


@main.command()
@click.option("--noise-dir", required=True, type=click.Path(path_type=Path),
              help="Folder of NN.pt noise tensors.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (NN.png).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Face UNet: the assignment's UNet.pt or an hw2rt .safetensors (default: bundled).")
@click.option("--eta", type=float, default=0.0, show_default=True)
@click.option("--steps", type=int, default=50, show_default=True,
              help="DDIM steps: timesteps i*(1000//steps)+1.")
@click.option("--batch-size", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--gt-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Reference NN.png: print per-image and mean MSE (0-255 scale) and write mse.json.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the eta > 0 noise (image i: seed + i).")
@click.option("--eta-grid", type=str, default=None,
              help="e.g. 0,0.25,0.5,0.75,1: also write the report grid.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the eta grid goes.")
@_engine_options
def ddim(noise_dir, out, checkpoint, eta, steps, batch_size, gt_dir, seed, eta_grid, grid, backend, precision,
         threads, device):
    """DDIM faces from a noise folder (HW2 Problem 2): NN.pt -> NN.png."""
    from hw2rt.io import read_noise_dir
    from hw2rt.runtime import jobs

    etas = _parse_floats(eta_grid, "--eta-grid") if eta_grid else None
    if (etas is None) != (grid is None):
        raise click.UsageError("--eta-grid and --grid go together")
    jobs.check_ddim_args(steps, [eta] + (etas or []))
    noise = read_noise_dir(noise_dir)
    with _open_engine("face_unet", checkpoint, backend, precision, threads, device, **_dims(noise)) as engine:
        summary = jobs.face_job(engine, noise, out, steps=steps, eta=eta, batch_size=batch_size, seed=seed,
                                gt_dir=gt_dir)
        _report(summary, f"ddim ({engine.name}, {steps} steps, eta {eta:g})")
        if "mse" in summary:
            for name, value in summary["mse"]["per_image"].items():
                click.echo(f"  {name}: MSE {value:.4f}")
            click.echo(f"  mean MSE {summary['mse']['mean']:.4f} (written to {Path(out) / 'mse.json'})")
        if etas:
            g = jobs.eta_grid(engine, noise, grid, etas, steps=steps, batch_size=batch_size, seed=seed)
            click.echo(f"eta grid (rows {', '.join(g['rows'])}; "
                       f"eta {', '.join(f'{e:g}' for e in etas)}): {grid}")


def _parse_floats(text, option):
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers",
                                 param_hint=option) from None


@main.command()
@click.option("--noise-dir", required=True, type=click.Path(path_type=Path))
@click.option("--pair", default="00,01", show_default=True, help="Two noise names from the folder.")
@click.option("--mode", type=click.Choice(["slerp", "lerp", "both"]), default="both", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The PNG to write.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--steps", type=int, default=50, show_default=True)
@_engine_options
def interp(noise_dir, pair, mode, out, checkpoint, steps, backend, precision, threads, device):
    """Interpolate two noises (alpha = 0, 0.1, ..., 1) and sample each: one row of 11 per mode."""
    from hw2rt.io import read_noise_dir
    from hw2rt.runtime import jobs

    names = [p.strip() for p in pair.split(",")]
    if len(names) != 2:
        raise click.BadParameter(f"{pair!r} must name two noises, e.g. 00,01", param_hint="--pair")
    jobs.check_ddim_args(steps, [0.0])
    modes = ("slerp", "lerp") if mode == "both" else (mode,)
    noise = read_noise_dir(noise_dir)
    with _open_engine("face_unet", checkpoint, backend, precision, threads, device, **_dims(noise)) as engine:
        s = jobs.interp_job(engine, noise, out, pair=tuple(names), modes=modes, steps=steps)
    click.echo(f"interp: {' / '.join(modes)} rows of 11 ({names[0]} -> {names[1]}): {out}")
    return s


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Digit UNet (default: bundled).")
@click.option("--per-digit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--w", type=float, default=2.0, show_default=True, help="Classifier-free guidance weight.")
@click.option("--sampler", type=click.Choice(options.SAMPLERS), default="ancestral", show_default=True,
              help="ancestral: the assignment's DDPM; ddim: DDIM over the T = 1000 schedule.")
@click.option("--steps", type=int, default=1000, show_default=True,
              help="ancestral: T (the model's training T); ddim: the number of DDIM steps (<= 1000).")
@click.option("--eta", type=float, default=0.0, show_default=True,
              help="ddim only: 0 is deterministic; 1 adds fresh noise every step, "
                   "like the ancestral sampler.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=250, show_default=True,
              help="Images per sampler call (the engine sees twice this, for guidance).")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="10x10 report grid.")
@click.option("--frames", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Six reverse-process frames of the first 0.")
@_engine_options
def ddpm(out, checkpoint, per_digit, w, sampler, steps, eta, seed, batch_size, grid, frames, backend,
         precision, threads, device):
    """Guided DDPM digits (HW2 Problem 1): {d}_{i:03d}.png for d = 0..9, i = 1..per-digit."""
    from hw2rt.runtime import jobs

    jobs.digit_plan(sampler, steps, eta)  # refused before the engine is opened (an export takes seconds)
    with _open_engine("digit_unet", checkpoint, backend, precision, threads, device) as engine:
        s = jobs.digit_job(engine, out, per_digit=per_digit, w=w, sampler=sampler, steps=steps, eta=eta,
                           seed=seed, batch_size=batch_size, grid_path=grid, frames_path=frames)
        eta_note = f", eta {eta:g}" if sampler == "ddim" else ""
        _report(s, f"ddpm ({engine.name}, {sampler} {s['steps']} steps of T={s['T']}{eta_note}, w={w:g})")
    for key in ("grid", "frames"):
        if key in s:
            click.echo(f"  {key}: {s[key]}")


@main.command()
@click.option("--images", required=True, type=click.Path(path_type=Path), help="Folder of digit images.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV to write.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="DANN checkpoint, or a bundled name (default: dann_svhn if 'svhn' is in the images path, "
                   "else dann_usps, the assignment's convention).")
@click.option("--batch-size", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--features", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save the 512-d features (.npz: names, features, labels), e.g. for t-SNE.")
@_engine_options
def classify(images, out, checkpoint, batch_size, features, backend, precision, threads, device):
    """DANN inference (HW2 Problem 3): image_name,label for every image of a folder.

    Grayscale images are repeated to 3 channels; images that are not 28x28 are resized to 28x28
    (bilinear), as the assignment's transforms do, and the count is reported.
    """
    from hw2rt.checkpoints import default_dann
    from hw2rt.runtime import jobs

    with _open_engine("dann", checkpoint, backend, precision, threads, device,
                      default=default_dann(images)) as engine:
        s = jobs.classify_job(engine, images, out, batch_size=batch_size, features_path=features)
        click.echo(f"classify ({engine.name}): {s['images']} images -> {out} in {s['seconds']:.2f} s "
                   f"({s['images_per_s']:.0f} images/s)"
                   + (f"; {s['resized']} resized to 28x28" if s["resized"] else ""))
    if features:
        click.echo(f"  features: {features}")


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs/demo"),
              show_default=True)
@click.option("--quick", is_flag=True, help="Tiny sizes: a smoke run in seconds.")
@click.option("--backend", type=click.Choice(["torch", "ort", "auto"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
def demo(out, quick, backend, threads):
    """The main job on the bundled defaults: data, engines, parity, faces, digits, DANN -> report.html."""
    from hw2rt.demo import run_demo

    report = run_demo(out, quick=quick, backend=backend, threads=threads, log=click.echo)
    click.echo(f"report: {report.resolve()}")


@main.command()
@click.option("--model", required=True, type=click.Choice(options.MODELS))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: the bundled model.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .onnx to write.")
@click.option("--precision", type=click.Choice(options.GRAPH_PRECISIONS), default="fp32", show_default=True,
              help="fp16: fp16 graph with fp32 islands (timestep embedding, GroupNorm statistics, softmax).")
@click.option("--opset", type=click.IntRange(min=18), default=None,
              help="ONNX opset (default: hw2rt's, >= 18).")
@click.option("--size", type=click.IntRange(min=32), default=None,
              help="face_unet: the H = W to trace with (the graph stays dynamic in H and W).")
def export(model, checkpoint, out, precision, opset, size):
    """Export a network to ONNX from its I/O spec: named inputs, dynamic batch, hw2rt metadata."""
    from hw2rt.checkpoints import resolve_checkpoint
    from hw2rt.export import DEFAULT_OPSET, export_checkpoint

    dims = {"height": size, "width": size} if size and model == "face_unet" else None
    path = export_checkpoint(resolve_checkpoint(checkpoint, model), out, model=model, precision=precision,
                             opset=opset or DEFAULT_OPSET, dims=dims)
    click.echo(f"export: {model} ({precision}, opset {opset or DEFAULT_OPSET}) -> {path}")


@main.command()
@click.option("--model", required=True, type=click.Choice(options.MODELS))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: a seeded random model of a small configuration (damped diffusion models).")
@click.option("--steps", type=int, default=None, help="End-to-end sampler steps (DDIM) or T (DDPM).")
@click.option("--size", type=click.IntRange(min=32), default=None, help="face_unet: H = W of the inputs.")
@click.option("--no-e2e", is_flag=True, help="Per-call comparison only.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@_engine_options
def parity(model, checkpoint, steps, size, no_e2e, json_path, backend, precision, device, threads):
    """Compare an engine, opened as the commands open it, with the torch fp32 CPU reference; exit status 1
    when over budget."""
    from hw2rt.parity import format_report, run_parity

    dims = {"height": size, "width": size} if size and model == "face_unet" else None
    report = run_parity(model, checkpoint, backend=backend, precision=precision, device=device,
                        threads=threads, dims=dims, steps=steps, e2e=not no_e2e, json_path=json_path)
    click.echo(format_report(report))
    if not report["passed"]:
        raise SystemExit(1)


# --- training and evaluation ---------------------------------------------------------------------

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


def _train(fn, *args, **kwargs):
    from hw2rt.training.loop import format_summary

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        summary = fn(*args, **kwargs)
    except KeyboardInterrupt:
        click.echo("interrupted: checkpoint saved; continue with --resume", err=True)
        raise SystemExit(130) from None
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

    r = run_tsne(checkpoint, source, target, out, n_per_domain=n_per_domain, bn_stats=bn_stats)
    click.echo(f"t-SNE: {', '.join(str(v) for k, v in r.items() if str(v).endswith('.png'))}")



# --- benchmarks ----------------------------------------------------------------------------------

def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the options given on the command line."""
    from click.core import ParameterSource

    parts = [f"hw2rt {ctx.info_name}"]
    for p in ctx.command.params:
        if ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE:
            parts.append(p.opts[-1] if p.is_flag else f"{p.opts[0]} {ctx.params[p.name]}")
    return " ".join(parts)


def _csv(text, kind=str):
    try:
        return [kind(x) for x in text.split(",") if x.strip()] if text else None
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list") from None


@main.command()
@click.option("--suite", type=click.Choice(["cpu", "quick", "gpu", "cpu-smoke"]), default="cpu",
              show_default=True,
              help="cpu: make bench; quick: tiny models in under a minute; gpu: the assignment's jobs on a "
                   "CUDA GPU (benchmarks/gpu_check.sh); cpu-smoke: the gpu suite at tiny sizes on the CPU.")
@click.option("--model", type=click.Choice(["digit_unet", "face_unet", "dann", "digit_classifier"]),
              default=None, help="One network (default: the suite's).")
@click.option("--backends", default=None,
              help=f"Comma list of runners (default: the suite's): {', '.join(RUNNERS)}, diffusers. "
                   "torch eager is always included: every ratio is against it.")
@click.option("--batches", default=None,
              help="Comma list of batch sizes for the per-call sweep (default: the suite's).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads of every runner (default: the suite's; 1 on the CPU suites).")
@click.option("--budget", type=click.FloatRange(min=1), default=None,
              help="Seconds for the whole run: sections that would not fit are skipped "
                   "(default: the suite's).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write every figure and the environment here (rewritten after every section).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the markdown report here (between the hw2rt-bench markers if the file has them).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of latency against batch per runner.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Export cache (default $HW2RT_CACHE or ~/.cache/hw2rt).")
@click.option("--quick", is_flag=True, help="Short for --suite quick.")
def bench(suite, model, backends, batches, threads, budget, json_path, md_path, plot_path, cache_dir, quick):
    """Time every runner side by side on the jobs' own loops: per-call latency, throughput, memory,
    FLOP/s against the measured peak, end-to-end loops against a diffusers baseline, cost growth.
    Exit status 1 when a section failed."""
    from hw2rt.bench.report import markdown, plot, write_markdown
    from hw2rt.bench.suites import make_suite, run_bench

    if quick and click.get_current_context().get_parameter_source("suite").name == "COMMANDLINE":
        raise click.UsageError("--quick is short for --suite quick: give one of them")
    chosen = make_suite("quick" if quick else suite, model=model, batches=_csv(batches, int),
                        backends=_csv(backends))
    result = run_bench(chosen, threads=threads, cache_dir=cache_dir, budget_s=budget, json_path=json_path,
                       command=_command_line(click.get_current_context()),
                       log=lambda m: click.echo(m, err=True))
    if md_path:
        write_markdown(result, md_path)
    if plot_path:
        plot(result, plot_path)
    click.echo(markdown(result))
    for p in (json_path, md_path, plot_path):
        if p:
            click.echo(f"wrote {p}", err=True)
    if any(s["status"] == "error" for s in result["sections"].values()):
        raise SystemExit(1)
