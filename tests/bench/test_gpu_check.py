"""`benchmarks/gpu_check.py --cpu-smoke`: the gpu suite end to end on the CPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

from hw2rt.runtime.jobs import FAST_SAMPLER

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_smoke_writes_valid_json(tmp_path):
    """benchmarks/gpu_check.py --cpu-smoke: the gpu suite's scenarios at tiny sizes, through the one
    harness."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--out", str(tmp_path),
           "--backends", "torch,bf16+graphs,trt+graphs"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    for key in ("suite", "env", "runners", "per_call", "scenarios", "goals", "sections", "wall_s",
                "budget_s"):
        assert key in result, key
    assert result["suite"] == "cpu-smoke" and result["budget_s"] == 110
    assert all(s["status"] == "ok" for s in result["sections"].values()), result["sections"]
    assert result["runners"]["trt+graphs"]["available"] is False
    assert "TensorRT" in result["runners"]["trt+graphs"]["reason"]
    loops = {(s["scenario"], s["backend"]): s for s in result["scenarios"]}
    assert loops[("face_ddim_loop", "bf16+graphs")]["parity_value"] >= 0
    # the reference stops after 6 of 12 steps in the smoke run
    digits = loops[("digit_ancestral_loop", "torch")]
    assert digits["extrapolated"] and digits["median_s"] > 0 and digits["parity_value"] == 0
    assert loops[("digit_ancestral_loop", "bf16+graphs")]["extrapolated"] is None
    assert (tmp_path / "gpu_check.log").read_text().strip() and (tmp_path / "gpu_check.md").read_text()
    # every goal is reported: the jobs' measured, graphs against eager saying it needs CUDA
    goals = {g["name"]: g for g in result["goals"]}
    assert list(goals) == ["face_job_1s", "digit_job_15s", "digit_fast_job_1s", "fp16_image_mse",
                           "graphs_faster"]
    assert goals["face_job_1s"]["value"] > 0 and goals["digit_job_15s"]["value"] > 0
    assert goals["digit_fast_job_1s"]["value"] > 0 and FAST_SAMPLER in goals["digit_fast_job_1s"]["goal"]
    assert "needs CUDA" in goals["graphs_faster"]["not_measured"]
    assert result["checks"]["graphs_equal_eager"].startswith("ok")


