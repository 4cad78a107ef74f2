"""The GPU machine's environment, proven on the CPU: `gpu_check.sh --cpu-smoke` in a venv that holds
only the GPU machine's packages, hw2rt run from the repository root without being installed.

    .venv/bin/python tests/gpu/gpu_env.py        # .ci/run runs it after `make test`

The lent GPU machine has Python 3.12 with torch, onnx, a CPU onnxruntime, numpy, pillow, click,
scikit-learn, scikit-image, tqdm, safetensors, matplotlib, ml-dtypes and Triton, and no diffusers,
pytest, hypothesis, mlxtend, TensorRT or onnxruntime-gpu (nor hw2rt: gpu_check.sh puts the repository
root on PYTHONPATH). This script builds a venv of this interpreter (`--without-pip`) whose
site-packages links exactly those distributions and what they require, taken from this project's
.venv; everything else is not importable there, as on that machine (`importlib.util.find_spec`
answers None, `importlib.metadata` knows no such distribution). Not emulated: the Python version
(this machine's), CUDA, and package versions (this machine's).

It fails unless every section of the cpu-smoke run ends `ok`, every headline goal (the face job, the
digit job and its few-step form, fp16 image MSE) has a measured value, graphs vs eager says it needs
CUDA, and the paths the GPU run depends on were walked: the diffusers baseline reported as missing, the
`auto` headline rows, both activation layouts on the face UNet, the device checks, the sharded job.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GPU_MACHINE = ("torch", "onnx", "onnxruntime", "numpy", "pillow", "click", "scikit-learn", "scikit-image",
               "tqdm", "safetensors", "matplotlib", "ml-dtypes", "triton")
ABSENT = ("diffusers", "pytest", "hypothesis", "mlxtend", "tensorrt", "hw2rt")  # must not import there
HEADLINE = ("face_job_1s", "digit_job_15s", "digit_fast_job_1s", "fp16_image_mse")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots) -> dict:
    """{name: Distribution} of `roots` and everything they require (markers ignored, extras not followed),
    as installed here."""
    found, todo = {}, list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here (triton on a CPU build of torch)
        found[name] = dist
        for req in dist.requires or []:
            if "extra ==" not in req:
                todo.append(re.match(r"[A-Za-z0-9_.\-]+", req).group(0))
    return found


def build_env(where: Path) -> Path:
    """A venv at `where` whose site-packages links the GPU machine's distributions; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = next(where.glob("lib/python*/site-packages"))
    for dist in _closure(GPU_MACHINE).values():
        tops = {Path(f).parts[0] for f in dist.files or [] if not Path(f).parts[0].startswith("..")}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    return where / "bin" / "python"


def _fail(msg: str) -> int:
    print(f"gpu_env: FAILED: {msg}", file=sys.stderr)
    return 1


def check(result: dict) -> list:
    """What the cpu-smoke result must show; the problems found."""
    bad = [f"section {n}: {s['status']} ({s.get('error') or s.get('reason')})"
           for n, s in result["sections"].items() if s["status"] != "ok"]
    goals = {g["name"]: g for g in result["goals"]}
    bad += [f"goal {n} not measured: {goals.get(n, {}).get('not_measured')}" for n in HEADLINE
            if goals.get(n, {}).get("value") is None]
    if "needs CUDA" not in (goals.get("graphs_faster", {}).get("not_measured") or ""):
        bad.append(f"graphs_faster should say it needs CUDA: {goals.get('graphs_faster')}")
    # (hw2rt's own metadata may be visible: `pip install -e` leaves hw2rt.egg-info in the repository root)
    versions = result["env"]["versions"]
    bad += [f"{pkg} {versions[pkg]} was visible" for pkg in ("diffusers", "tensorrt") if pkg in versions]
    rows = {(s["scenario"], s["backend"]): s for s in result["scenarios"]}
    for scenario in ("face_ddim_loop", "digit_ancestral_loop"):
        if rows.get((scenario, "auto"), {}).get("median_s") is None:
            bad.append(f"{scenario}: no auto (headline) row")
    if "not importable" not in (rows.get(("face_ddim_loop", "diffusers"), {}).get("skipped") or ""):
        bad.append("the face loop's diffusers row should say diffusers is not importable")
    layouts = [r for r in result["per_call"] if r["model"] == "face_unet" and r["median_ms"] is not None
               and r["backend"] in ("bf16+graphs", "bf16-nchw+graphs")]
    if len(layouts) < 2:
        bad.append("both activation layouts should be measured on the face UNet")
    checks = result.get("checks") or {}
    if not str(checks.get("graphs_equal_eager")).startswith("ok") or "trt_matches_torch" not in checks:
        bad.append(f"device checks: {checks}")
    if not result.get("sharded") or not all(r["identical"] for r in result["sharded"]):
        bad.append(f"sharded digit job: {result.get('sharded')}")
    return bad


def main() -> int:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hw2rt-gpu-env-") as tmp:
        python = build_env(Path(tmp, "venv"))
        probe = "; ".join(f"__import__('importlib.util').util.find_spec({m!r}) is None or print({m!r})"
                          for m in ABSENT)
        seen = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp, check=True)
        if seen.stdout.strip():
            return _fail(f"importable in the GPU machine's environment: {seen.stdout.split()}")
        out = Path(tmp, "out")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(PYTHON=str(python), OUT=str(out), HW2RT_CACHE=str(Path(tmp, "cache")),
                   PATH=f"{python.parent}:{env.get('PATH', '')}")
        r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], env=env,
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            print(r.stdout[-6000:], r.stderr[-6000:], sep="\n", file=sys.stderr)
            return _fail(f"gpu_check.sh --cpu-smoke exited {r.returncode}")
        bad = check(json.loads((out / "gpu_check.json").read_text()))
    if bad:
        return _fail("; ".join(bad))
    print(f"gpu_env: ok: gpu_check.sh --cpu-smoke in the GPU machine's package set, "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
