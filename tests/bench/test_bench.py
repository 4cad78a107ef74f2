"""hw2rt bench: the quick suite end to end (JSON schema, report files), bf16 plumbing, small helpers.
Timings are never asserted: only that they are there and well formed."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hw2rt.bench import measure, report, suites
from hw2rt.bench.runners import DIFFUSERS
from hw2rt.cli import main
from hw2rt.engines import open_engine
from hw2rt.errors import Hw2rtError
from hw2rt.export.int8 import weight_range
from hw2rt.io import to_uint8_signed
from hw2rt.models import get_spec
from hw2rt.runtime.jobs import FAST_STEPS
from hw2rt.verify.parity import BUDGETS, compare_outputs, random_model

# Written out (not taken from scenarios.CALL_FIELDS) so that a change of the JSON's shape fails here.
PER_CALL_KEYS = {"model", "config", "dims", "batch", "backend", "label", "precision", "compute_precision",
                 "median_ms", "p10_ms", "p90_ms", "n", "first_call_ms", "first_call_memory_mib",
                 "items_per_s", "gflop_per_call", "achieved_gflops", "peak_gflops", "peak_fraction",
                 "memory_mib", "memory_method", "parity_metric", "parity_value", "parity_budget",
                 "parity_passed", "speedup_vs_torch", "skipped"}
SCENARIO_KEYS = {"scenario", "model", "config", "dims", "batch", "images", "steps", "backend", "label",
                 "precision", "median_s", "p10_s", "p90_s", "n", "per_step_ms", "images_per_s",
                 "speedup_vs_torch", "parity_metric", "parity_value", "parity_budget", "parity_passed",
                 "extrapolated", "compute_precision", "gflop", "achieved_gflops", "peak_gflops",
                 "peak_fraction", "step_engine_ms", "step_noise_ms", "step_other_ms", "skipped"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    md = out / "RESULTS.md"
    md.write_text("# Results\n\nprose kept\n\n<!-- hw2rt-bench:begin -->\nold figures\n"
                  "<!-- hw2rt-bench:end -->\n\ntail kept\n")
    args = ["bench", "--suite", "quick", "--json", str(out / "bench.json"), "--md", str(md), "--plot",
            str(out / "latency.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "bench.json").read_text()), result.output


def test_quick_bench_writes_a_well_formed_json(quick_run):
    _, data, _ = quick_run
    assert data["schema"] == suites.SCHEMA and data["suite"] == "quick"
    assert data["command"].startswith("hw2rt bench") and "--suite quick" in data["command"]
    assert all(s["status"] == "ok" for s in data["sections"].values()), data["sections"]
    env = data["env"]
    assert env["threads"] == 1 and env["cpu"] and {"torch", "onnxruntime", "python"} <= set(env["versions"])
    assert isinstance(env["cpu_flags"]["avx2"], bool) and env["torch_cpu_capability"]
    assert env["ort_int8_weight_range"] == weight_range("ort")
    assert data["peaks"]["fp32"]["gflops"] > 0 and data["peaks"]["bf16"]["gflops"] > 0
    assert set(data["runners"]) >= {"torch", "bf16", "ort"}

    rows = data["per_call"]
    assert rows and all(set(r) == PER_CALL_KEYS for r in rows)
    assert {r["model"] for r in rows} == {"digit_unet", "face_unet", "dann"}
    for r in rows:
        assert r["skipped"] is None, r
        assert r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["n"] >= 3
        assert r["gflop_per_call"] > 0 and r["achieved_gflops"] > 0 and 0 < r["peak_fraction"]
        assert r["parity_passed"] is True, r  # every runner within its precision's per-call budget
        if r["backend"] == "torch":
            assert r["speedup_vs_torch"] == 1.0 and r["parity_value"] == 0.0
    face = next(r for r in rows if r["model"] == "face_unet" and r["backend"] == "torch")
    per_image = measure.flops_per_item("face_unet", face["config"], face["dims"])
    assert face["gflop_per_call"] == pytest.approx(face["batch"] * per_image / 1e9)

    scenarios = data["scenarios"]
    assert all(set(s) == SCENARIO_KEYS for s in scenarios)
    fast = "digit_fast_loop"  # the few-step job the scripts run, beside the DDIM loop
    assert {s["scenario"] for s in scenarios} == {"digit_ddim_loop", fast, "face_ddim_loop", "dann_folder"}
    loops = [s for s in scenarios if s["scenario"] != "dann_folder"]
    assert {s["backend"] for s in loops} >= {"torch", "ort", "bf16", DIFFUSERS}
    assert {s["backend"] for s in loops if s["scenario"] == fast} >= {"torch", "ort", DIFFUSERS}
    assert all(s["steps"] == FAST_STEPS for s in loops if s["scenario"] == fast)
    for s in loops:  # the diffusers loops run the same math as hw2rt's DDIM and solver: same images
        if s["backend"] == DIFFUSERS and s["scenario"] == fast and FAST_STEPS == 3:
            assert "steps back a fixed 333" in s["skipped"]  # 1,000 / 3 is not a whole step
            continue
        assert s["median_s"] > 0 and s["parity_metric"] == "image_mse_255" and s["parity_passed"] is True, s
    dann = [s for s in scenarios if s["scenario"] == "dann_folder"]
    assert all(s["images_per_s"] > 0 and 0 <= s["parity_value"] <= 1 for s in dann)

    growth = data["growth"]
    assert {(g["backend"], g["axis"]) for g in growth} >= {("torch", "images"), ("torch", "steps")}
    for g in growth:
        assert len(g["seconds"]) == len(g["values"]) and {"a_s", "b_s", "r2", "linear"} == set(g["fit"])
    # every goal is reported; the one this suite has no runner for says so
    assert [(g["name"], g["target"]) for g in data["goals"]] == [
        ("digit_loop_2x", 2.0), ("digit_loop_2x_int8", 2.0), ("face_peak_85", 0.85), ("peer_1_2x", 1.2)]
    int8, peer = data["goals"][1], data["goals"][3]
    assert int8["value"] is None and int8["met"] is None and "ort-int8" in int8["not_measured"]
    assert peer["value"] is None and "no openvino-default row" in peer["not_measured"]
    assert all(isinstance(g["met"], bool) for g in data["goals"] if g["not_measured"] is None)


def test_quick_bench_writes_the_report_and_the_plot(quick_run):
    out, data, output = quick_run
    md = (out / "RESULTS.md").read_text()
    assert md.startswith("# Results\n\nprose kept") and md.rstrip().endswith("tail kept")
    assert "old figures" not in md and "### Per call" in md and "### End to end" in md
    assert data["command"] in md
    top = data["env"]["ort_int8_weight_range"]
    assert f"ORT int8 weights [-{top}, {top}]" in md
    # a CPU without VNNI (export/int8.py) says so
    assert report._int8_weights({"ort_int8_weight_range": 64}) == "ORT int8 weights [-64, 64] (no VNNI); "
    assert "### Per call" in output
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bf16_on_the_torch_backend_stays_within_its_budget():
    spec = get_spec("digit_unet")
    net = random_model("digit_unet", {"n_feat": 16})
    feeds = spec.example_inputs(3)
    ref = open_engine("digit_unet", net, backend="torch", precision="fp32").run(feeds)
    engine = open_engine("digit_unet", net, backend="torch", precision="bf16", threads=1)
    assert engine.precision == "bf16" and engine.backend == "torch"
    out = engine.run(feeds)
    assert out["eps"].dtype == torch.float32 and out["eps"].is_contiguous()
    stats = compare_outputs(ref, out, BUDGETS["bf16"]["per_call_rel_max_abs"])
    assert stats["eps"]["passed"] and stats["eps"]["required_rtol"] > 0  # really ran in bf16
    assert net.init_conv.conv1[1].__class__.__name__ == "BatchNorm2d"  # the caller's module untouched
    from hw2rt.engines.auto import choose  # auto's bf16 is the backend measured fastest for it here
    assert open_engine("digit_unet", net, backend="auto", precision="bf16").backend == choose(
        "digit_unet", "bf16", "cpu").backend


@pytest.mark.parametrize("backend", ["ort", "trt"])
def test_bf16_elsewhere_is_a_clear_error(backend):
    with pytest.raises(Hw2rtError, match=f"bf16 runs on torch and openvino, not {backend}"):
        open_engine("dann", random_model("dann"), backend=backend, precision="bf16")


def test_quick_is_short_for_the_quick_suite_and_not_another():
    result = CliRunner().invoke(main, ["bench", "--quick", "--suite", "gpu"])
    assert result.exit_code == 2 and "--quick is short for --suite quick" in result.output


def test_unknown_backend_is_refused():
    result = CliRunner().invoke(main, ["bench", "--backends", "torch,nope"])
    assert result.exit_code != 0 and "nope" in result.output


def test_linear_fit_and_quantile():
    fit = measure.linear_fit([1, 2, 3, 4], [1.5, 2.5, 3.5, 4.5])
    assert (fit["a_s"], fit["b_s"], fit["r2"]) == pytest.approx((0.5, 1.0, 1.0))
    assert fit["linear"] is True
    assert measure.linear_fit([1, 2, 3, 4], [1, 4, 1, 4])["linear"] is False
    assert measure.quantile([4, 1, 3, 2, 5], 0.5) == 3 and measure.quantile([1, 2], 0.1) == pytest.approx(1.1)


def test_alternate_interleaves_and_flips_the_order():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    times, _ = measure.alternate(fns, {"a": 3, "b": 1, "c": 2}, "cpu")
    assert calls == ["a", "b", "c", "c", "a", "a"]
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 1, "c": 2}


def test_a_case_can_leave_a_runner_out_with_a_reason():
    """The full CPU suite leaves torch.compile out for the face UNet (minutes of cold compile);
    naming the network measures it with every runner. A skipped runner is reported, not timed."""
    face = next(c for c in suites.make_suite("cpu").cases if c.model == "face_unet")
    assert "compile" in face.skip
    assert suites.make_suite("cpu", model="face_unet").cases[0].skip == {}
    suite = suites.Suite("test", "cpu",
                         [suites.Case("digit_unet", {"n_feat": 16}, {}, (1,), skip={"bf16": "not here"})],
                         ["torch", "bf16"], point_s=0.05, min_repeats=2, max_repeats=2, peak_budget_s=0.02)
    rows = suites.run_bench(suite, log=lambda *_: None)["per_call"]
    by = {r["backend"]: r for r in rows}
    assert by["bf16"]["skipped"] == "not here" and by["bf16"]["median_ms"] is None
    assert by["torch"]["skipped"] is None and by["torch"]["median_ms"] > 0


class _Recording:
    """An engine wrapper that records the timesteps every call sees (t/T for digits, raw t for faces)."""

    def __init__(self, engine):
        self.engine, self.seen = engine, []
        self.device, self.inputs = engine.device, engine.inputs

    def __call__(self, *args):
        self.seen.append(tuple(args[-2 if len(args) == 4 else 1].tolist()))
        return self.engine(*args)


def test_the_loop_scenarios_run_the_jobs_own_samplers(tmp_path):
    """What bench times is what the jobs run: the same engine calls, timesteps and images."""
    from hw2rt.bench.loops import Loop, digit_loop_fns, face_loop_fns
    from hw2rt.runtime import jobs
    from hw2rt.runtime.schedules import DIGIT, FACE

    digit = random_model("digit_unet", {"n_feat": 8})
    bench_engine = _Recording(open_engine("digit_unet", digit, backend="torch"))
    job_engine = _Recording(open_engine("digit_unet", digit, backend="torch"))
    images = digit_loop_fns({"torch": bench_engine}, digit, Loop(10, 4), "cpu").timed["torch"]()
    jobs.digit_job(job_engine, tmp_path / "digits", per_digit=1, sampler="ddim", steps=4, progress=False)
    assert bench_engine.seen == job_engine.seen
    assert [s[0] for s in bench_engine.seen] == [t / 1000 for t in DIGIT.timesteps(4)]  # the digit schedule
    job_images = [np.asarray(Image.open(tmp_path / "digits" / f"{d}_001.png")) for d in range(10)]
    assert all(np.array_equal(to_uint8_signed(a), b) for a, b in zip(images, job_images))

    face = random_model("face_unet", {"base": 32, "norm_groups": 8})
    bench_face = _Recording(open_engine("face_unet", face, backend="torch"))
    dims = {"height": 32, "width": 32}
    face_loop_fns({"torch": bench_face}, face, Loop(2, 3), dims, "cpu").timed["torch"]()
    assert [s[0] for s in bench_face.seen] == FACE.timesteps(3)  # the face job's schedule, raw t


def test_a_failing_section_is_recorded_and_the_json_written_after_each(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a backend blew up\nsecond line")

    monkeypatch.setattr(suites, "dann_folder_scenario", broken)
    suite = suites.Suite("test", "cpu", [suites.Case("dann", {}, {}, (2,))], ["torch"], dann_images=4,
                         point_s=0.02, min_repeats=2, max_repeats=2, peak_budget_s=0.02)
    result = suites.run_bench(suite, json_path=tmp_path / "r.json", log=lambda *_: None)
    sections = result["sections"]
    assert sections["dann: classify a folder"] == {"status": "error",
                                                   "error": "RuntimeError: a backend blew up",
                                                   "seconds": sections["dann: classify a folder"]["seconds"]}
    assert sections["dann: per call"]["status"] == "ok" and result["per_call"]
    assert json.loads((tmp_path / "r.json").read_text())["sections"] == json.loads(json.dumps(sections))
    # A budget too small for a section skips it, and says why.
    tight = suites.run_bench(suite, budget_s=1, log=lambda *_: None)["sections"]
    assert tight["dann: per call"]["status"] == "skipped" and "budget" in tight["dann: per call"]["reason"]


def test_the_peer_goal_counts_int8_on_the_loop_by_its_per_call_budget():
    """The fastest hw2rt path against OpenVINO's defaults: int8's loop image MSE is not its gate (the task
    grade is), so on the loop it counts where its call kept int8's per-call budget; a row over budget never
    counts; auto's choice for that precision is reported."""
    from hw2rt.bench.report import _goal_peer_1_2x
    from hw2rt.engines.auto import choose

    def call(backend, ms, ok=True):
        return {"model": "digit_unet", "batch": 20, "backend": backend, "median_ms": ms, "parity_passed": ok,
                "peak_fraction": 0.5, "compute_precision": "x"}

    def loop(backend, s, ok=True):
        return {"scenario": "digit_ddim_loop", "backend": backend, "median_s": s, "parity_passed": ok,
                "peak_fraction": 0.5, "compute_precision": "x"}

    result = {"env": {"device": "cpu"},
              "per_call": [call("torch", 600), call("openvino-default", 260), call("ort-int8", 200),
                           call("bf16", 100, ok=False)],
              "scenarios": [loop("torch", 3.2), loop("openvino-default", 1.3),
                            loop("ort-int8", 1.0, ok=False)]}
    goal = _goal_peer_1_2x(result)
    assert goal["figures"]["per_call"]["backend"] == goal["figures"]["loop"]["backend"] == "ort-int8"
    assert goal["value"] == pytest.approx(1.3) and goal["met"] is True
    assert goal["auto"] == choose("digit_unet", "int8", "cpu").line()
    result["per_call"][2]["parity_passed"] = False  # int8 over its per-call budget: neither row counts
    assert "no hw2rt row" in _goal_peer_1_2x(result)
