"""The gpu suite's paths that a CPU can walk (issue 28): goals never dropped, diffusers optional, a failing
runner's row, the jobs' own batching, the device checks, the layouts, the TF32 flags."""
import sys

import pytest
import torch

from hw2rt.bench import gpu_checks, loops, measure, report, runners, suites
from hw2rt.bench.loops import Loop, digit_loop_fns
from hw2rt.engines import open_engine
from hw2rt.errors import Hw2rtError
from hw2rt.runtime import jobs
from hw2rt.verify.parity import random_model

HEADLINE = ("face_job_1s", "digit_job_15s", "fp16_image_mse")


def _tiny(backends=("torch", "auto"), **kwargs) -> suites.Suite:
    """The gpu suite's shape (jobs first, then per call; the device checks off) at the smallest sizes."""
    face = suites.Case("face_unet", {"base": 32, "norm_groups": 8}, {"height": 32, "width": 32}, (2,))
    return suites.Suite("test", "cpu", [face, suites.Case("digit_unet", {"n_feat": 8}, {}, (4,))],
                        list(backends), digit_loops=(Loop(2, 3, sampler="ancestral", repeats=1),),
                        face_loop=Loop(2, 2, repeats=1), goals=suites.GPU_GOALS, point_s=0.02, min_repeats=2,
                        max_repeats=2, peak_budget_s=0.02, slow_factor=1e9, loops_first=True, **kwargs)


def test_without_diffusers_the_headline_goals_are_still_measured(monkeypatch):
    """The GPU machine has no diffusers: its baseline row says why, and the jobs and goals are measured."""
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError
    result = suites.run_bench(_tiny(), log=lambda *_: None)
    assert all(s["status"] == "ok" for s in result["sections"].values()), result["sections"]
    baseline = [s for s in result["scenarios"] if s["backend"] == "diffusers"]
    assert baseline and all("diffusers is not importable" in s["skipped"] for s in baseline)
    by = {g["name"]: g for g in result["goals"]}
    assert list(by) == list(suites.GPU_GOALS)
    for name in HEADLINE:
        assert by[name]["not_measured"] is None and by[name]["value"] is not None, by[name]
    assert by["face_job_1s"]["backend"] == "auto" and "(opened ort, fp16)" in by["face_job_1s"]["label"]
    assert set(by["digit_job_15s"]["step_ms"]) == {"engine", "noise", "other"}
    assert by["digit_job_15s"]["step_ms"]["noise"] > 0  # the ancestral job draws fresh noise every step
    assert by["graphs_faster"]["value"] is None and "needs CUDA" in by["graphs_faster"]["not_measured"]


def test_a_goal_whose_section_failed_is_reported_with_the_reason():
    sections = {"face_unet: the face job's DDIM loop": {"status": "error", "error": "OSError: disk"},
                "digit_unet: the digit job's loop (ancestral)": {"status": "skipped",
                                                                "reason": "3 s of the budget left"}}
    result = {"env": {"device": "cuda"}, "scenarios": [], "per_call": [], "sections": sections}
    by = {g["name"]: g for g in report.goals(result, suites.GPU_GOALS)}
    assert list(by) == list(suites.GPU_GOALS)
    assert by["face_job_1s"]["value"] is None and "OSError: disk" in by["face_job_1s"]["not_measured"]
    assert "3 s of the budget left" in by["digit_job_15s"]["not_measured"]
    assert "OSError: disk" in by["fp16_image_mse"]["not_measured"]
    md = report.markdown({**result, "created": "now", "command": None, "suite": "gpu", "wall_s": 1.0,
                          "goals": list(by.values()), "peaks": {}, "runners": {}, "growth": [],
                          "env": {"device": "cuda", "cpu": "x", "cpu_flags": {}, "logical_cpus": 1,
                                  "torch_cpu_capability": "x", "threads": 1, "loadavg_start": [0],
                                  "versions": {"python": "3"}}})
    assert "not measured: face_unet: the face job's DDIM loop: error (OSError: disk)" in md


class _Broken:
    """Stands in for an engine whose every call fails (a TensorRT plan that cannot run, say)."""

    def __init__(self, engine):
        self.engine, self.device, self.inputs, self.name = engine, engine.device, engine.inputs, engine.name

    def describe(self):
        return self.engine.describe()

    def run(self, feeds):
        raise RuntimeError("the plan blew up\nsecond line")

    def __call__(self, *args):
        raise RuntimeError("the plan blew up\nsecond line")

    def close(self):
        self.engine.close()


def test_a_failing_runner_gets_its_row_and_the_others_are_measured(monkeypatch):
    real = runners.open_runner

    def open_runner(name, *args, **kwargs):
        engine = real(name, *args, **kwargs)
        return _Broken(engine) if name == "bf16" else engine

    monkeypatch.setattr(suites, "open_runner", open_runner)
    result = suites.run_bench(_tiny(("torch", "bf16")), log=lambda *_: None)
    assert all(s["status"] == "ok" for s in result["sections"].values()), result["sections"]
    for rows in (result["per_call"], result["scenarios"]):
        by = {(r["model"], r["backend"]): r for r in rows}
        for model in ("face_unet", "digit_unet"):
            assert by[(model, "bf16")]["skipped"] == "failed: RuntimeError: the plan blew up"
            assert by[(model, "torch")]["skipped"] is None and by[(model, "torch")]["parity_value"] == 0


def test_measure_alternate_records_a_failure_only_when_asked():
    def boom():
        raise ValueError("no\nmore")

    failed = {}
    times, _ = measure.alternate({"ok": lambda: 1, "bad": boom}, {"ok": 2, "bad": 2}, "cpu", failed)
    assert failed == {"bad": "failed: ValueError: no"} and len(times["ok"]) == 2 and times["bad"] == []
    with pytest.raises(ValueError):
        measure.alternate({"bad": boom}, {"bad": 1}, "cpu")


class _Rows:
    """Records the batch of every engine call."""

    def __init__(self, engine):
        self.engine, self.rows = engine, []
        self.device, self.inputs = engine.device, engine.inputs

    def __call__(self, *args):
        self.rows.append(args[0].shape[0])
        return self.engine(*args)


def test_the_digit_loop_calls_the_engine_as_the_job_does():
    """1,000 digits doubled by guidance are 2,000 rows: the bench must batch as the job does (the engine's
    max_batch holds the job's calls), not call the engine with every image at once."""
    net = random_model("digit_unet", {"n_feat": 8})
    spec_max = 512
    bench = _Rows(open_engine("digit_unet", net, backend="torch", max_batch=spec_max))
    job = _Rows(open_engine("digit_unet", net, backend="torch", max_batch=spec_max))
    loop = Loop(300, 2, sampler="ddim")
    digit_loop_fns({"torch": bench}, net, loop, "cpu").timed["torch"]()
    jobs.sample_digits(job, torch.arange(300) % 10, jobs.digit_plan("ddim", 2), progress=False)
    assert bench.rows == job.rows and max(bench.rows) <= spec_max
    with pytest.raises(Hw2rtError, match="max_batch"):  # what one chunk of every image did
        jobs.sample_digits(job, torch.arange(300) % 10, jobs.digit_plan("ddim", 2), batch_size=300,
                           progress=False)


def test_a_capped_run_of_several_chunks_is_extrapolated_over_all_of_them():
    """The job splits 300 digits into its own chunks (250 + 50 by default): a run stopped after 3 engine
    steps has done 3 of 2 steps x 2 chunks."""
    net = random_model("digit_unet", {"n_feat": 8})
    engine = _Rows(open_engine("digit_unet", net, backend="torch"))
    loop = Loop(300, 2, sampler="ddim", max_steps={"torch": 3})
    out = digit_loop_fns({"torch": engine}, net, loop, "cpu").timed["torch"]()
    full = _Rows(engine.engine)  # the job itself, uncapped: its engine calls are the run's steps
    jobs.sample_digits(full, torch.arange(300) % 10, jobs.digit_plan("ddim", 2), progress=False)
    assert len(full.rows) > 2, "300 digits should take several of the job's chunks"
    assert out == loops.Partial(done=3, steps=len(full.rows), chunk=full.rows[0] // 2)


def test_the_warm_up_runs_at_the_timed_shape_and_reports_the_jobs_chunk():
    net = random_model("digit_unet", {"n_feat": 8})
    engine = _Rows(open_engine("digit_unet", net, backend="torch"))
    fns = digit_loop_fns({"torch": engine}, net, Loop(6, 5, sampler="ddim", warm_steps=2), "cpu")
    warm = fns.warm["torch"]()
    assert isinstance(warm, loops.Partial) and warm.done == 2 and warm.chunk == 6
    assert engine.rows == [12, 12]  # the timed shape: every image, doubled by guidance


def test_the_device_checks_walk_on_the_cpu():
    checks = gpu_checks.run_checks("cpu")
    assert checks["graphs_equal_eager"].startswith("ok: fp32")
    assert checks["trt_matches_torch"] == "skipped: TensorRT needs a CUDA GPU"


def test_the_layout_runners_open_both_layouts():
    net = random_model("face_unet", {"base": 32, "norm_groups": 8})
    layouts = {name: runners.open_runner(name, "face_unet", net, device="cpu").engine.memory_format
               for name in ("bf16+graphs", "bf16-nchw+graphs")}
    assert layouts == {"bf16+graphs": "channels_last", "bf16-nchw+graphs": "contiguous"}
    assert "fp16-cl+graphs" in suites.make_suite("gpu").backends


def test_strict_fp32_leaves_the_legacy_flags_readable_and_restores_them():
    """Inductor reads torch.backends.*.allow_tf32; after torch's new fp32_precision API was set, that read
    raises (torch 2.13). strict_fp32 sets the legacy flags only, and restores them."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, True
        with measure.strict_fp32():
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def test_the_gpu_suite_runs_the_jobs_first_and_auto_as_its_headline():
    suite = suites.make_suite("gpu")
    assert [c.model for c in suite.cases][:2] == ["face_unet", "digit_unet"] and suite.loops_first
    assert "auto" in suite.backends and suite.checks
    assert "fp16-compile+graphs" in suite.loop_skip  # it would recompile per bucket inside the budget


def test_the_gpu_env_check_holds_the_gpu_machines_packages_and_refuses_a_dropped_goal():
    from tests.gpu import gpu_env

    dists = gpu_env._closure(gpu_env.GPU_MACHINE)
    assert {"torch", "onnxruntime", "numpy"} <= set(dists)
    assert not {"diffusers", "pytest", "hypothesis", "mlxtend", "hw2rt"} & set(dists)
    sections = {"digit_unet: the digit job's loop (ancestral)": {"status": "error", "error": "E: x"}}
    result = {"sections": sections, "goals": [], "env": {"versions": {"diffusers": "0.30"}}, "scenarios": [],
              "per_call": []}
    bad = "; ".join(gpu_env.check(result))
    for problem in ("digit job's loop (ancestral): error (E: x)", "goal face_job_1s not measured",
                    "diffusers 0.30 was visible", "graphs_faster should say it needs CUDA"):
        assert problem in bad
