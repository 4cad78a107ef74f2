"""`hw2rt demo` (what `make demo` runs): the whole toolkit on one machine, in minutes.

Stages: a stand-in hw2_data tree -> each network from its bundled checkpoint (or, where this
install has none yet, a seeded random small model, labelled as such) -> ONNX export + engine (per
network what the scripts open: engines/auto.py) -> parity against the torch reference -> faces (DDIM,
eta grid, slerp/lerp rows) -> digits (guided DDPM grid + reverse-process frames) -> a side-by-side timing
of torch eager and the engines per network -> DANN classification of the USPS-like and SVHN-like
test sets -> outputs/demo/report.html.
"""
import base64
import html
import itertools
import json
import time
from functools import partial
from pathlib import Path

from hw2rt.bench.report import speed_chart
from hw2rt.checkpoints import ASSETS, save_checkpoint
from hw2rt.engines import open_engine
from hw2rt.engines.auto import choose
from hw2rt.evaluate import digit_accuracy
from hw2rt.io import open_noise_dir, read_labels_csv
from hw2rt.models import get_spec
from hw2rt.options import QUANTIZED
from hw2rt.runtime import jobs
from hw2rt.verify.parity import SMALL, random_model, run_parity

# bundled name -> the network it holds
BUNDLED = {"face_unet": "face_unet", "digit_unet": "digit_unet", "dann_usps": "dann", "dann_svhn": "dann",
           "digit_classifier": "digit_classifier"}
PARITY = ("face_unet", "digit_unet", "dann_usps", "digit_classifier")  # one of each network


def demo_engines(backend: str) -> dict:
    """network -> (backend, precision, why): with "auto" what the scripts open on this CPU (the fastest
    precision whose gate the bundled model passed, on the backend measured fastest for it: engines/auto.py);
    a named backend runs fp32."""
    if backend != "auto":
        return {m: (backend, "fp32", f"{backend} fp32 (named)") for m in dict.fromkeys(BUNDLED.values())}
    return {m: (c.backend, c.precision, c.line())
            for m, c in ((m, choose(m, "auto", "cpu")) for m in dict.fromkeys(BUNDLED.values()))}


def demo_models(model_dir: Path) -> dict:
    """bundled name -> (checkpoint path, description): bundled where present, else a seeded random
    small model."""
    chosen = {}
    for name, model in BUNDLED.items():
        bundled = ASSETS / f"{name}.safetensors"
        if bundled.is_file():
            chosen[name] = (bundled, "bundled trained model (see hw2rt/assets/MODEL_CARDS.md)")
            continue
        net = random_model(model, SMALL[model][0], seed=0)
        path = model_dir / f"{name}.safetensors"
        save_checkpoint(net, model, path, half=False)
        chosen[name] = (path, "UNTRAINED: seeded random weights (no bundled model in this install yet)"
                              + ("; last conv damped" if model in ("face_unet", "digit_unet") else ""))
    return chosen


def _accuracy(pred_csv: Path, truth_csv: Path) -> float:
    truth = dict(read_labels_csv(truth_csv))
    pred = read_labels_csv(pred_csv)
    return sum(truth[n] == y for n, y in pred) / len(pred)


def run_demo(out_dir="outputs/demo", *, quick=False, backend="auto", threads=None, log=print) -> Path:
    """Run every stage; returns the report's path. `quick`: tiny sizes (for tests)."""
    from hw2rt.data.synth import synthesize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engines = demo_engines(backend)  # the demo runs on the CPU
    steps = 10 if quick else 50
    ddpm_t = 10 if quick else 100
    per_digit = 2 if quick else 10
    stages, figures, parity, accuracy = [], {}, [], {}

    def stage(name):
        log(f"== {name}")
        stages.append([name, time.perf_counter()])

    stage("stand-in data (hw2rt data synth)")
    data = out / "hw2_data"
    # The default tree (seed 0) is the one the bundled models were trained on: its test splits are
    # their held-out test sets, so the demo's DANN accuracies are the model cards' test figures.
    sizes = {"mnistm": 60, "usps": 60, "svhn": 60, "faces": 10} if quick else None
    synthesize(data, seed=0, sizes=sizes, overwrite=True)

    stage("models")
    models = demo_models(out / "models")

    stage("parity: the jobs' engines vs torch fp32")
    for model, (_, _, why) in engines.items():
        log(f"  {model}: {why}")
    for name in PARITY:
        model = BUNDLED[name]
        b, p, _ = engines[model]
        dims = {"height": 32, "width": 32} if name == "face_unet" else None
        # a quantized engine's gate is the task grade (recorded in engines/auto.py), not the image MSE
        report = run_parity(model, models[name][0], backend=b, precision=p, device="cpu", threads=threads,
                            dims=dims, steps=steps if name == "face_unet" else ddpm_t, e2e_images=2,
                            e2e=not quick and p not in QUANTIZED)
        parity.append(report)
        log(f"  {name} {b} {p}: {'passed' if report['passed'] else 'FAILED'}")

    noise = open_noise_dir(data / "face" / "noise")
    b, p, _ = engines["face_unet"]
    with open_engine("face_unet", models["face_unet"][0], backend=b, precision=p, threads=threads,
                     dims={"height": 32, "width": 32}) as face:
        stage(f"faces: DDIM {steps} steps")
        faces = jobs.face_job(face, noise, out / "faces", steps=steps)
        figures["faces"] = [out / "faces" / f"{i:02d}.png" for i in range(faces["images"])]
        stage("faces: eta grid")
        jobs.eta_grid(face, noise, out / "eta_grid.png", [0, 0.25, 0.5, 0.75, 1.0], steps=steps)
        figures["eta grid (rows: noises 00-03, columns: eta 0, 0.25, 0.5, 0.75, 1)"] = [out / "eta_grid.png"]
        stage("faces: slerp / lerp")
        jobs.interp_job(face, noise, out / "interp.png", steps=steps)
        figures["interpolation 00 -> 01 (top: slerp, bottom: lerp)"] = [out / "interp.png"]

    # The digit job's few-step setting (jobs.FAST_*): the fewest steps whose grade stayed within 1 point
    # of DDIM 50's on every seed measured (benchmarks/RESULTS.md, "Few-step solvers").
    fast = f"{jobs.FAST_SAMPLER}, {jobs.FAST_STEPS} steps of T=1000, eta {jobs.FAST_ETA:g}"
    b, p, _ = engines["digit_unet"]
    stage(f"digits: guided {fast}, {b} {p}")
    with open_engine("digit_unet", models["digit_unet"][0], backend=b, precision=p, threads=threads) as digit:
        digits = jobs.digit_job(digit, out / "digits", per_digit=per_digit, sampler=jobs.FAST_SAMPLER,
                                steps=jobs.FAST_STEPS, eta=jobs.FAST_ETA, grid_path=out / "digit_grid.png",
                                frames_path=out / "frames.png", batch_size=100)
        digits["engine"] = f"{digit.backend} {digit.precision}"
    figures[f"digits (rows 0-9), {fast}, w=2, {digits['engine']}"] = [out / "digit_grid.png"]
    accuracy["generated digits (grader)"] = digit_accuracy(out / "digits", models["digit_classifier"][0],
                                                           device="cpu")["accuracy"]
    figures["reverse process of the first 0"] = [out / "frames.png"]

    stage("speed: torch eager vs ONNX Runtime fp32 vs the jobs' engines, side by side")
    speed = speed_rows(models, engines, threads=threads, repeats=3 if quick else 10)
    speed_chart(speed, out / "speed.png", "ms per call, side by side in this run (CPU, bundled models)")

    stage("DANN: classify the stand-in test sets")
    b, p, _ = engines["dann"]
    for domain in ("usps", "svhn"):
        test = data / "digits" / domain
        with open_engine("dann", models[f"dann_{domain}"][0], backend=b, precision=p, threads=threads,
                         calibration_images=test / "data") as dann:
            ids = [nm for nm, _ in read_labels_csv(test / "test.csv")]
            folder = out / f"{domain}_test"
            folder.mkdir(exist_ok=True)
            for nm in ids:  # the test split alone, as the assignment's hw2_3.sh gets it
                (folder / nm).write_bytes((test / "data" / nm).read_bytes())
            jobs.classify_job(dann, folder, out / f"{domain}_pred.csv")
            accuracy[f"DANN on {domain}-like test"] = _accuracy(out / f"{domain}_pred.csv", test / "test.csv")
    stages.append(["end", time.perf_counter()])

    timings = [(a[0], b[1] - a[1]) for a, b in itertools.pairwise(stages)]
    report = out / "report.html"
    report.write_text(_html(models, parity, figures, accuracy, timings, faces, digits, engines, speed,
                            out / "speed.png"))
    (out / "report.json").write_text(json.dumps({"parity": parity, "accuracy": accuracy, "timings": timings,
                                                 "speed": speed,
                                                 "models": {k: [str(p), d] for k, (p, d) in models.items()}},
                                                indent=2, default=str))
    return report


# One call per network at the size its job sends (faces: 4 at 32x32; digits: a doubled guidance batch).
SPEED_BATCH = {"face_unet": 4, "digit_unet": 20, "dann": 64, "digit_classifier": 64}


def speed_runners(backend: str, precision: str) -> dict:
    """label -> (backend, precision): torch eager (the reference), ONNX Runtime fp32, and the job's engine
    if it is another."""
    runners = {"torch": ("torch", "fp32"), "ort": ("ort", "fp32")}
    if (backend, precision) not in runners.values():
        runners[f"{backend} {precision}"] = (backend, precision)
    return runners


def speed_rows(models: dict, engines: dict, *, threads=None, repeats: int = 10) -> list:
    """Per network, one call of each runner on the same inputs, alternating (bench's timing):
    median, p10, p90 in ms and the speed-up against torch eager."""
    from hw2rt.bench.measure import side_by_side

    rows = []
    for name in PARITY:
        model = BUNDLED[name]
        dims = {"height": 32, "width": 32} if model == "face_unet" else {}
        feeds = get_spec(model).example_inputs(SPEED_BATCH[model], seed=0, **dims)
        opened = {label: open_engine(model, models[name][0], backend=b, precision=p, device="cpu",
                                     threads=threads, dims=dims or None)
                  for label, (b, p) in speed_runners(*engines[model][:2]).items()}
        stats = side_by_side({r: partial(e.run, feeds) for r, e in opened.items()}, repeats, "cpu")
        for e in opened.values():
            e.close()
        for runner, st in stats.items():
            rows.append({"network": f"{name} (batch {SPEED_BATCH[model]})", "runner": runner, **st,
                         "x_torch": stats["torch"]["median_ms"] / st["median_ms"]})
    return rows


# Every figure is drawn at one fixed scale, nearest-neighbour (the tiles are 28-32 px): three screen
# pixels per image pixel, less only for a figure that would not fit the page's 1200 px at 3x.
PAGE_PX = 1200
SCALE = 3


def _img(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    k = max(1, min(SCALE, PAGE_PX // w))
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<img src="data:image/png;base64,{data}" width="{w * k}" height="{h * k}" '
            f'style="image-rendering:pixelated" alt="{html.escape(path.name)}">')


def _html(models, parity, figures, accuracy, timings, faces, digits, engines, speed, speed_png) -> str:
    esc = html.escape
    rows = []
    for r in parity:
        worst = max(r["per_call"]["outputs"].values(), key=lambda s: s["required_rtol"])
        e2e = r.get("end_to_end")
        e2e_mse = f"{e2e['mean_image_mse_255']:.4g}" if e2e else ""
        rows.append(f"<tr><td>{r['model']}</td>"
                    f"<td>{r['candidate']['backend']} {r['candidate']['precision']}</td>"
                    f"<td>{worst['max_abs']:.3g}</td><td>{worst['required_rtol']:.3g}</td>"
                    f"<td>{worst['cosine']:.7f}</td>"
                    f"<td>{e2e_mse}</td>"
                    f"<td>{'passed' if r['passed'] else 'FAILED'}</td></tr>")
    parts = [
        "<!doctype html><meta charset=utf-8><title>hw2rt demo</title>",
        (f"<style>body{{font-family:sans-serif;max-width:{PAGE_PX}px;margin:2em auto;padding:0 8px}}"
         "td,th{padding:2px 8px;border-bottom:1px solid #ddd}img{max-width:100%}</style>"),
        "<h1>hw2rt demo</h1>",
        ("<p>Engines, per network:</p><ul>" + "".join(f"<li>{m}: <b>{esc(b)} {esc(p)}</b> ({esc(why)})</li>"
                                                       for m, (b, p, why) in engines.items()) + "</ul>"),
        ("<p>Data: <b>stand-ins</b> made by <code>hw2rt data synth</code> "
         "(not the assignment's data; numbers here are not the assignment's numbers).</p>"),
        "<h2>Models</h2><ul>" + "".join(f"<li>{k}: {esc(d)} (<code>{esc(str(p))}</code>)</li>"
                                        for k, (p, d) in models.items()) + "</ul>",
        "<h2>Parity against the torch fp32 reference</h2><table><tr><th>model</th><th>engine</th>"
        "<th>max abs err</th><th>needs rtol</th><th>cosine</th><th>end-to-end image MSE (0-255)</th>"
        "<th></th></tr>" + "".join(rows) + "</table>",
        "<h2>Accuracy (stand-in data)</h2><ul>"
        + "".join(f"<li>{k}: {v:.4f}</li>" for k, v in accuracy.items()) + "</ul>",
        (f"<p>Faces: {faces['images']} images, {faces['images_per_s']:.2f} images/s. "
        f"Digits: {digits['images']} images, {digits['sampler']} {digits['steps']} steps of T={digits['T']} "
         f"on {esc(digits['engine'])}, "
         f"{digits['images_per_s']:.2f} images/s "
         "(the assignment's 1000-step ancestral DDPM of 1000 digits would take tens of minutes on a CPU; "
         f"the demo runs the few-step setting, <code>hw2rt ddpm --sampler {digits['sampler']} --steps "
         f"{digits['steps']} --eta {digits['eta']:g}</code>, graded within 1 point of DDIM 50 on the bundled "
         "model).</p>"),
        "<h2>Speed: torch eager against the engines, side by side</h2>",
        (f"<p>One call per network on the same inputs, the runners alternating call by call "
         f"({esc(str(len(speed)))} rows; median and p10-p90 of the timed calls after a warm-up). "
         "x = speed-up against torch eager fp32 in this run. "
         "<code>hw2rt bench</code> measures every runner at more sizes.</p>"),
        "<table><tr><th>network</th><th>runner</th><th>ms per call</th><th>p10-p90</th><th>x torch</th></tr>"
        + "".join(f"<tr><td>{esc(r['network'])}</td><td>{esc(r['runner'])}</td><td>{r['median_ms']:.2f}</td>"
                  f"<td>{r['p10_ms']:.2f}-{r['p90_ms']:.2f}</td><td>{r['x_torch']:.2f}</td></tr>"
                  for r in speed)
        + "</table>",
        _img(speed_png),
        "<h2>Figures</h2>",
    ]
    for title, paths in figures.items():
        parts.append(f"<h3>{esc(title)}</h3>" + " ".join(_img(p) for p in paths))
    parts.append("<h2>Timings</h2><table>"
                 + "".join(f"<tr><td>{esc(n)}</td><td>{s:.1f} s</td></tr>" for n, s in timings)
                 + "</table>")
    return "\n".join(parts)


