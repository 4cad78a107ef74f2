"""The engine commands: the jobs (`ddim`, `interp`, `ddpm`, `classify`), `demo`, `export`, `parity`."""
from pathlib import Path

import click

from hw2rt import options
from hw2rt.cli.group import main

PRECISION_HELP = ("auto (with --backend auto): the fastest precision whose gate the bundled model passed, on "
                  "this machine. fp16: the fp16 graph with fp32 islands (ort, trt; torch on CUDA). bf16: "
                  "torch, openvino; fast only on CPUs/GPUs with native bf16. int8: the QDQ graph calibrated "
                  "on the model's own loop (ort, openvino, trt; checked by `parity --precision int8`). fp8: "
                  "the E4M3 QDQ graph of the same calibration, for trt on Hopper/Ada GPUs (ort: its "
                  "numerics, no faster).")


def _engine_options(f):
    """--backend, --precision, --device, --threads: passed to `open_engine` as they are; it validates them."""
    f = click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="CPU threads for the engine (default: the library's choice).")(f)
    f = click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:N or auto (cuda when torch sees a GPU). On cuda, engines run "
                          "behind CUDA graphs.")(f)
    f = click.option("--precision", type=click.Choice((*options.PRECISIONS, "auto")), default=None,
                     help=PRECISION_HELP + " Default: fp16 on a CUDA device with --backend auto or trt, "
                     "else fp32.")(f)
    f = click.option("--backend", type=click.Choice(options.BACKENDS), default="auto", show_default=True,
                     help=options.AUTO_BACKEND)(f)
    return f


def _open_engine(model, checkpoint, backend, precision, threads, device, default=None,
                 calibration_images=None, **dims):
    """The engine a command runs: the one `open_engine`, on the checkpoint (or the bundled default)."""
    from hw2rt import distributed
    from hw2rt.checkpoints import resolve_checkpoint
    from hw2rt.engines import open_engine

    engine = open_engine(model, resolve_checkpoint(checkpoint, default or model), backend=backend,
                         precision=precision, device=device, threads=threads, dims=dims or None,
                         calibration_images=calibration_images)
    if engine.auto_choice and distributed.world().main:
        click.echo(engine.auto_choice.line())
    return engine


def _outputs(*outputs):
    from hw2rt.io import check_outputs

    check_outputs(*outputs)


def _face_noise(noise_dir):
    """The noise folder (an `io.NoiseDir`: only its first file read, the jobs read their shares) and the
    face UNet's serving size, that file's; refused if the UNet cannot serve it."""
    from hw2rt.io import open_noise_dir
    from hw2rt.models import get_spec

    noise = open_noise_dir(noise_dir)
    dims = {"height": noise.shape[2], "width": noise.shape[3]}
    get_spec("face_unet").check_dims(dims, str(noise_dir))
    return noise, dims


def _open_on_ranks(model, checkpoint, backend, precision, threads, device, **kwargs):
    """`_open_engine` under torchrun: rank 0 first (it fills the export cache), on this process's device."""
    from hw2rt import distributed

    return distributed.rank0_first(lambda: _open_engine(model, checkpoint, backend, precision, threads,
                                                        distributed.device_for(device), **kwargs))


def _report(summary, what):
    rate = f", {summary['images_per_s']:.2f} images/s" if "images_per_s" in summary else ""
    ranks = f" on {summary['ranks']} ranks" if summary.get("ranks", 1) > 1 else ""
    click.echo(f"{what}: wrote {summary.get('images', '')} images to "
               f"{summary.get('out_dir', summary.get('out', ''))}"
               f" in {summary.get('seconds', 0):.1f} s{ranks}{rate}")


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
    from hw2rt import distributed
    from hw2rt.runtime import jobs

    etas = _parse_floats(eta_grid, "--eta-grid") if eta_grid is not None else None
    if (etas is None) != (grid is None):
        raise click.UsageError("--eta-grid and --grid go together")
    jobs.check_ddim_args(steps, [eta] + (etas or []))
    _outputs(("--out", out, True), ("--grid", grid, False))
    noise, dims = _face_noise(noise_dir)
    jobs.check_seed(seed, len(noise.names))
    with (distributed.session(device) as world,
          _open_on_ranks("face_unet", checkpoint, backend, precision, threads, device, **dims) as engine):
        summary = jobs.face_job(engine, noise, out, steps=steps, eta=eta, batch_size=batch_size, seed=seed,
                                gt_dir=gt_dir)
        g = jobs.eta_grid(engine, noise, grid, etas, steps=steps, batch_size=batch_size, seed=seed) \
            if etas else None
    if not world.main:
        return
    _report(summary, f"ddim ({engine.name}, {steps} steps, eta {eta:g})")
    if "mse" in summary:
        for name, value in summary["mse"]["per_image"].items():
            click.echo(f"  {name}: MSE {value:.4f}")
        click.echo(f"  mean MSE {summary['mse']['mean']:.4f} (written to {Path(out) / 'mse.json'})")
    if g is not None:
        click.echo(f"eta grid (rows {', '.join(g['rows'])}; eta {', '.join(f'{e:g}' for e in etas)}): {grid}")


def _parse_floats(text, option):
    from hw2rt.errors import Hw2rtError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise Hw2rtError(f"{option} {text!r}: expected comma-separated numbers, e.g. 0,0.5,1")
    return values


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
    from hw2rt import distributed
    from hw2rt.runtime import jobs

    names = [p.strip() for p in pair.split(",")]
    if len(names) != 2:
        raise click.BadParameter(f"{pair!r} must name two noises, e.g. 00,01", param_hint="--pair")
    jobs.check_ddim_args(steps, [0.0])
    modes = ("slerp", "lerp") if mode == "both" else (mode,)
    _outputs(("--out", out, False))
    noise, dims = _face_noise(noise_dir)
    jobs.check_pair(noise.names, names)  # before the engine is opened (an export takes seconds)
    with (distributed.session(device) as world,
          _open_on_ranks("face_unet", checkpoint, backend, precision, threads, device, **dims) as engine):
        jobs.interp_job(engine, noise, out, pair=tuple(names), modes=modes, steps=steps)
    if world.main:
        ranks = f" on {world.size} ranks" if world.size > 1 else ""
        click.echo(f"interp: {' / '.join(modes)} rows of 11 ({names[0]} -> {names[1]}){ranks}: {out}")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Digit UNet (default: bundled).")
@click.option("--per-digit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--w", type=float, default=2.0, show_default=True, help="Classifier-free guidance weight.")
@click.option("--sampler", type=click.Choice(options.SAMPLERS), default="ancestral", show_default=True,
              help="ancestral: the assignment's DDPM; ddim: DDIM over the T = 1000 schedule; dpmpp-2m, "
                   "unipc: the few-step solvers (DPM-Solver++(2M), UniPC-bh2) over that schedule.")
@click.option("--steps", type=int, default=1000, show_default=True,
              help="ancestral: T (the model's training T); the others: the number of steps (<= 1000).")
@click.option("--eta", type=float, default=0.0, show_default=True,
              help="ddim only: 0 is deterministic; 1 adds fresh noise every step, "
                   "like the ancestral sampler.")
@click.option("--x0-clip/--no-x0-clip", "clip", default=None,
              help="ddim, dpmpp-2m, unipc: clamp every predicted x0 to [-1, 1] (default: on).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per sampler call (the engine sees twice this, for guidance); default: the job's "
                   "per-device one (CPU 250, CUDA all 1,000). The files are the same whatever it is.")
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="10x10 report grid.")
@click.option("--frames", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Six reverse-process frames of the first 0.")
@_engine_options
def ddpm(out, checkpoint, per_digit, w, sampler, steps, eta, clip, seed, batch_size, grid, frames, backend,
         precision, threads, device):
    """Guided DDPM digits (HW2 Problem 1): {d}_{i:03d}.png for d = 0..9, i = 1..per-digit."""
    from hw2rt import distributed
    from hw2rt.runtime import jobs

    # refused before the engine is opened (an export takes seconds)
    plan = jobs.digit_plan(sampler, steps, eta, w, clip)
    jobs.check_seed(seed, 10 * per_digit, jobs.DIGIT_SEED_STRIDE)
    _outputs(("--out", out, True), ("--grid", grid, False), ("--frames", frames, False))
    with (distributed.session(device) as world,
          _open_on_ranks("digit_unet", checkpoint, backend, precision, threads, device) as engine):
        s = jobs.digit_job(engine, out, per_digit=per_digit, w=w, sampler=sampler, steps=steps, eta=eta,
                           seed=seed, batch_size=batch_size, grid_path=grid, frames_path=frames, clip=clip)
    if not world.main:
        return
    eta_note = f", eta {eta:g}" if sampler == "ddim" else ""
    eta_note += "" if sampler == "ancestral" else f", x0 clip {'on' if plan.clip else 'off'}"
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
    (bilinear), as the assignment's transforms do, and the count is reported. An int8 or fp8 engine is
    calibrated on (up to 512 of) the folder's own images: the target domain, no labels.
    """
    from hw2rt import distributed
    from hw2rt.checkpoints import default_dann
    from hw2rt.runtime import jobs

    _outputs(("--out", out, False), ("--features", features, False))
    with (distributed.session(device) as world,
          _open_on_ranks("dann", checkpoint, backend, precision, threads, device,
                         default=default_dann(images),
                         calibration_images=images if precision in (*options.QUANTIZED, "auto") else None)
          as engine):
        s = jobs.classify_job(engine, images, out, batch_size=batch_size, features_path=features)
    if not world.main:
        return
    ranks = f" on {world.size} ranks" if world.size > 1 else ""
    click.echo(f"classify ({engine.name}): {s['images']} images -> {out} in {s['seconds']:.2f} s{ranks} "
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

    _outputs(("--out", out, True))
    report = run_demo(out, quick=quick, backend=backend, threads=threads, log=click.echo)
    click.echo(f"report: {report.resolve()}")


@main.command()
@click.option("--model", required=True, type=click.Choice(options.MODELS))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: the bundled model (for dann: name one, dann_usps or dann_svhn).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .onnx to write.")
@click.option("--precision", type=click.Choice(options.GRAPH_PRECISIONS), default="fp32", show_default=True,
              help="fp16: fp16 graph with fp32 islands (timestep embedding, GroupNorm statistics, softmax). "
                   "int8: QDQ graph calibrated on the model's own loop (dann/digit_classifier: on "
                   "--calibration-images). fp8: its E4M3 QDQ form, for TensorRT on Hopper/Ada.")
@click.option("--calibration-method", type=click.Choice(("minmax", "entropy", "percentile")), default=None,
              help="int8/fp8: how activation ranges are chosen (default percentile, 99.99).")
@click.option("--calibration-images", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="int8/fp8 dann/digit_classifier: a folder of target-domain images to calibrate on.")
@click.option("--keep-fp32", default=None,
              help="int8/fp8: comma list of node-name scopes (/out/out.3/) and op types (Softmax) kept fp32, "
                   "or 'none' for everything int8 (default: the model's, hw2rt/export/int8.py).")
@click.option("--opset", type=int, default=None,
              help="ONNX opset (default: hw2rt's, >= 18).")
@click.option("--size", type=click.IntRange(min=32), default=None,
              help="face_unet: the H = W to trace with (the graph stays dynamic in H and W); with "
                   "--search-islands, the size the search samples at (default 64).")
@click.option("--search-islands", is_flag=True,
              help="fp16, face_unet/digit_unet: search the smallest set of fp32 islands whose images stay "
                   "within --budget of the fp32 images (and whose calls within parity's fp16 budget); "
                   "writes that graph and the search's report.")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --search-islands: the image MSE (0..255) budget (default: parity's fp16 0.3).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --search-islands: the JSON report (default: beside --out, .islands.json).")
def export(model, checkpoint, out, precision, calibration_method, calibration_images, keep_fp32, opset, size,
           search_islands, budget, report_path):
    """Export a network to ONNX from its I/O spec: named inputs, dynamic batch, hw2rt metadata."""
    from hw2rt.checkpoints import resolve_checkpoint
    from hw2rt.errors import Hw2rtError
    from hw2rt.export import DEFAULT_OPSET, export_checkpoint

    dims = {"height": size, "width": size} if size and model == "face_unet" else None
    if not search_islands:
        if budget is not None or report_path is not None:
            raise Hw2rtError("--budget and --report belong to --search-islands")
        _outputs(("--out", out, False))
        path = export_checkpoint(resolve_checkpoint(checkpoint, model), out, model=model, precision=precision,
                                 opset=opset or DEFAULT_OPSET, dims=dims, method=calibration_method,
                                 calibration_images=calibration_images,
                                 keep_fp32=None if keep_fp32 is None else
                                 tuple(k for k in keep_fp32.split(",") if k and k != "none"))
        click.echo(f"export: {model} ({precision}, opset {opset or DEFAULT_OPSET}) -> {path}")
        return
    import json

    from hw2rt.checkpoints import file_sha256, load_model
    from hw2rt.io import atomic_path
    from hw2rt.verify.islands import BUDGET_IMAGE_MSE_255, SEARCH_LOOPS, format_search, search_islands

    if precision != "fp16" or model not in SEARCH_LOOPS:
        raise Hw2rtError(f"--search-islands searches the fp32 islands of an fp16 graph of face_unet or "
                         f"digit_unet (got --model {model} --precision {precision})")
    if opset is not None and opset != DEFAULT_OPSET:
        raise Hw2rtError(f"--search-islands exports opset {DEFAULT_OPSET}")
    report_path = report_path or out.with_suffix(".islands.json")
    _outputs(("--out", out, False), ("--report", report_path, False))
    path = resolve_checkpoint(checkpoint, model)
    net, _, _ = load_model(path, model)
    report = search_islands(model, net, out, budget=budget or BUDGET_IMAGE_MSE_255, dims=dims,
                            source_sha256=file_sha256(path), log=click.echo)
    with atomic_path(report_path) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    click.echo(format_search(report))
    click.echo(f"report: {report_path}")


@main.command()
@click.option("--model", required=True, type=click.Choice(options.MODELS))
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: a seeded random model of a small configuration (damped diffusion models).")
@click.option("--steps", type=int, default=None, help="End-to-end sampler steps (DDIM) or T (DDPM).")
@click.option("--size", type=click.IntRange(min=32), default=None, help="face_unet: H = W of the inputs.")
@click.option("--no-e2e", is_flag=True, help="Per-call comparison only.")
@click.option("--trajectory", is_flag=True,
              help="Also compare step by step along the sampler (free and forced runs); diffusion models.")
@click.option("--sampler", type=click.Choice(options.SAMPLERS), default=None,
              help="digit_unet: the digit loop of the end-to-end run, --trajectory and --task (default: "
                   "ancestral, and the task gate's DDIM eta 1). Faces: the face DDIM.")
@click.option("--eta", type=float, default=0.0, show_default=True, help="DDIM eta of --sampler ddim.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The candidate: this hw2rt export of --checkpoint (default: the bundled model), on ort.")
@click.option("--localize", is_flag=True,
              help="Name the first node of the candidate's ONNX graph whose output leaves the per-call "
                   "budget, against the fp32 export (also done whenever the per-call check fails).")
@click.option("--task", default=None,
              help="Grade the task: digit_unet: N digits (a multiple of 10; guided DDIM, eta 1, w 2) graded "
                   "by the bundled grader; dann/digit_classifier: an image folder's labels. Replaces the "
                   "image MSE in the verdict.")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --task FOLDER: its image_name,label CSV, for both accuracies.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --trajectory: the PNG of error vs step (default: beside --json, .png).")
@_engine_options
def parity(model, checkpoint, steps, size, no_e2e, trajectory, sampler, eta, onnx_path, localize, task,
           labels_csv, json_path, plot_path, backend, precision, device, threads):
    """Compare an engine, opened as the commands open it (or an ONNX graph), with the torch fp32 CPU
    reference; exit status 1 when over budget."""
    from hw2rt.errors import Hw2rtError
    from hw2rt.runtime.jobs import check_finite
    from hw2rt.verify.parity import format_report, run_parity

    loop = None
    if trajectory:
        if model not in ("face_unet", "digit_unet"):
            raise Hw2rtError(f"--trajectory: {model} has no sampler (face_unet or digit_unet)")
        loop = "face-ddim" if model == "face_unet" else f"digit-{sampler or 'ancestral'}"
        if plot_path is None and json_path is not None:
            plot_path = json_path.with_suffix(".png")
    if precision in options.QUANTIZED and task is None and onnx_path is None:
        if model == "digit_unet":
            task = "1000"  # the quantized gate: 1,000 graded digits against 1,000 fp32 ones
        elif model != "face_unet":
            raise Hw2rtError(f"--precision {precision} {model}: give --task FOLDER, target-domain images "
                             "(they calibrate the graph, without labels, and are classified by both engines)")
    if task is not None:
        from hw2rt.verify.task import check_task

        task = check_task(model, task)
    if labels_csv is not None and (task is None or model == "digit_unet"):
        raise Hw2rtError("--labels belongs to --task FOLDER (dann, digit_classifier)")
    check_finite("--eta", eta)
    if sampler is not None and model == "digit_unet":
        from hw2rt.runtime.jobs import digit_plan

        digit_plan(sampler, steps or 50, eta)  # refused before any work
    _outputs(("--json", json_path, False), ("--plot", plot_path, False))
    dims = {"height": size, "width": size} if size and model == "face_unet" else None
    report = run_parity(model, checkpoint, backend=backend, precision=precision, device=device,
                        threads=threads, dims=dims, steps=steps, e2e=not no_e2e, trajectory=loop, eta=eta,
                        onnx=onnx_path, localize=localize, task=task, task_labels=labels_csv,
                        json_path=json_path, plot_path=plot_path,
                        sampler=sampler if model == "digit_unet" else None)
    click.echo(format_report(report))
    if not report["passed"]:
        raise SystemExit(1)
