"""The openvino backend: hw2rt's ONNX exports on OpenVINO's CPU plugin against the torch fp32 reference, its
precision really set (fp32 is f32, bf16 keeps the fp32 islands), the int8 QDQ graph, its compiled-model
cache, and what it refuses."""
import json

import onnx
import pytest
import torch
from click.testing import CliRunner

import hw2rt.engines.openvino as ov_engine
import hw2rt.engines.torch as torch_engine
from hw2rt.checkpoints import file_sha256
from hw2rt.cli import main
from hw2rt.engines import TorchEngine, open_engine
from hw2rt.engines.openvino import OpenVinoEngine, has_bf16
from hw2rt.engines.openvino_islands import island_precisions, island_scopes
from hw2rt.errors import Hw2rtError
from hw2rt.models import get_spec
from hw2rt.runtime import calibration
from hw2rt.verify.parity import BUDGETS, compare_outputs, random_model, run_parity
from tests.helpers import DIMS, small_net

openvino = pytest.importorskip("openvino")
BF16 = pytest.mark.skipif(not has_bf16(), reason="bf16 on openvino needs a CPU with AVX512-BF16 or AMX "
                                                 "(OPTIMIZATION_CAPABILITIES lists no BF16 here)")
MODELS = ["digit_unet", "dann", "digit_classifier", "face_unet"]


def _errors(model, net, engine, batch=3, precision="fp32"):
    feeds = get_spec(model).example_inputs(batch, 0, **DIMS.get(model, {}))
    with torch.inference_mode():
        ref = TorchEngine(net, model).run(feeds)
    out = engine.run(feeds)
    for s in engine.outputs:  # the spec's contract: torch tensors of its dtypes and shapes
        assert isinstance(out[s.name], torch.Tensor) and out[s.name].dtype == s.dtype
        assert out[s.name].shape == ref[s.name].shape
    return compare_outputs(ref, out, BUDGETS[precision]["per_call_rel_max_abs"])


@pytest.mark.parametrize("model", MODELS)
def test_fp32_matches_torch_and_is_asked_for_as_f32(exported, model):
    """OpenVINO's CPU default on a bf16 CPU is bf16: fp32 is asked for, and the compiled model says so."""
    net, path = exported(model)
    engine = OpenVinoEngine(path, model=model, threads=1)
    stats = _errors(model, net, engine)
    assert all(s["passed"] for s in stats.values()), stats
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert engine.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert engine.compiled.get_property("NUM_STREAMS") == 1
    d = engine.describe()
    assert (d["backend"], d["precision"], d["inference_precision"]) == ("openvino", "fp32", "f32")
    assert d["islands"] == [] and d["threads"] == 1


@BF16
@pytest.mark.parametrize("model", MODELS)
def test_bf16_is_within_its_budget_and_really_bf16(exported, model):
    net, path = exported(model)
    engine = OpenVinoEngine(path, model=model, precision="bf16", threads=1)
    stats = _errors(model, net, engine, precision="bf16")
    assert all(s["passed"] for s in stats.values()), stats
    assert max(s["required_rtol"] for s in stats.values()) > BUDGETS["fp32"]["per_call_rel_max_abs"]  # bf16
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    assert engine.islands == torch_engine.fp32_islands(model, "bf16")


def test_island_scopes_are_the_exporters_module_scopes(exported):
    assert island_scopes(("time", "time.0", "down2.resblocks.conv1", "blocks.0.attn")) == (
        "/time/", "/time/time.0/", "/down2/resblocks/conv1/", "/blocks/blocks.0/attn/")
    _, path = exported("face_unet")
    names = [n.name for n in onnx.load(str(path)).graph.node]
    for island in torch_engine.fp32_islands("face_unet", "bf16"):
        (scope,) = island_scopes((island,))
        assert any(n.startswith(scope) for n in names), f"no node of the island {island} under {scope}"
    # "/down2/resblocks/time/..." is another module than the island "time"
    assert not any(n.startswith("/time/") for n in names if "resblocks" in n)


@BF16
def test_bf16_islands_run_in_fp32(exported, monkeypatch):
    """An island on the face UNet's timestep embedding ("time", the fp16 policy's): its phase nodes run f32
    in OpenVINO's runtime model under a bf16 inference precision, and at large timesteps (where bf16 loses
    t's last bits) the per-call error against torch fp32 is smaller with the island than without."""
    monkeypatch.setitem(torch_engine.FP32_ISLANDS["bf16"], "face_unet", ("time",))
    net, path = exported("face_unet")
    feeds = {"x": torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
             "t": torch.tensor([999, 981, 951, 901, 777, 613, 517, 1])}
    ref = TorchEngine(net, "face_unet").run(feeds)
    with_islands = OpenVinoEngine(path, model="face_unet", precision="bf16", threads=1)
    ran = island_precisions(with_islands)
    for node in ("Unsqueeze", "Mul", "Sin", "Cos", "Concat"):
        assert ran[f"/time/time.0/{node}"] == "f32", ran
    error = compare_outputs(ref, with_islands.run(feeds), 1.0)["eps"]["required_rtol"]

    monkeypatch.setitem(torch_engine.FP32_ISLANDS["bf16"], "face_unet", ())  # the engine follows fp32_islands
    without = OpenVinoEngine(path, model="face_unet", precision="bf16", threads=1)
    assert without.islands == () and island_precisions(without) == {}
    ran = {n: p for n, p in _runtime_precisions(without).items() if n.startswith("/time/time.0/")}
    assert ran["/time/time.0/Mul"] == "bf16"
    error_without = compare_outputs(ref, without.run(feeds), 1.0)["eps"]["required_rtol"]
    assert error < 0.8 * error_without, (error, error_without)


@BF16
def test_bf16_face_islands_inside_resblocks_run_as_torch_runs_them(exported):
    """The face UNet's bf16 islands include ResBlock convolutions whose output a residual sum adds: the
    plugin fuses the two and, across the precision boundary, lost the output's shape ([0, 3, 0, 0]); sums
    with an fp32 input run fp32, as torch promotes them (_promoted), and the output is checked against the
    spec. The islands' timestep projections (Linear) run fp32 too (as FullyConnected they ran bf16 whatever
    the mark), and a convolution outside the islands runs bf16."""
    net, path = exported("face_unet")
    engine = OpenVinoEngine(path, model="face_unet", precision="bf16", threads=1)
    assert "up21.resblocks.conv2" in engine.islands
    feeds = {"x": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
             "t": torch.tensor([999, 10])}
    out = engine.run(feeds)
    assert out["eps"].shape == (2, 3, 32, 32)
    ran = island_precisions(engine)
    assert {p for n, p in ran.items() if n.startswith("/up21/resblocks/conv2/")} == {"f32"}, ran
    assert {p for n, p in ran.items() if n.startswith("/up21/resblocks/time/time.1/")} == {"f32"}, ran
    every = _runtime_precisions(engine)
    assert every["/up21/resblocks/Add"] == "f32"  # conv1's output (bf16) + the fp32 timestep projection
    assert every["/up21/resblocks/conv1/Conv"] == "bf16"
    budget = BUDGETS["bf16"]["per_call_rel_max_abs"]
    stats = compare_outputs(TorchEngine(net, "face_unet").run(feeds), out, budget)
    assert stats["eps"]["passed"], stats


@BF16
def test_bf16_face_keeps_what_torch_computes_in_fp32_outside_the_islands(exported):
    """What torch's policy computes in fp32 beside the islands stays f32 where the plugin would rewrite it
    into bf16: the timestep's sinusoidal embedding (from the integer t; in bf16, t = 999 was 1000 and every
    phase with it), the SiLU between a GroupNorm island and a convolution island (the plugin's own Swish
    dropped the mark) and the nearest upsampling before an island convolution (the plugin's Interpolate
    did). With them OpenVINO's bf16 error is torch's, not 2-3x it (the bundled face UNet: 2.9e-3 per call
    against torch's 9.2e-4, 0.45-0.57 image MSE, before)."""
    net, path = exported("face_unet")
    engine = OpenVinoEngine(path, model="face_unet", precision="bf16", threads=1)
    assert {"up21.resblocks.norm2", "up21.resblocks.conv2", "up20.1"} <= set(engine.islands)
    ran = _runtime_precisions(engine, "outputPrecisions")
    assert {ran[f"/time/time.0/{op}"] for op in ("Cast", "Mul", "Sin", "Cos", "Concat")} == {"f32"}, ran
    assert ran["/up21/resblocks/Mul_1"] == "f32"  # SiLU(norm2(h)), read by conv2
    assert ran["/up20/up20.0/Resize"] == "f32"  # the upsampling read by up20.1
    assert ran["/up21/resblocks/Mul"] == "bf16"  # SiLU(norm1(h)), read by conv1: bf16 in torch too
    feeds = {"x": torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
             "t": torch.tensor([999, 700, 300, 10])}
    ref = TorchEngine(net, "face_unet").run(feeds)
    budget = BUDGETS["bf16"]["per_call_rel_max_abs"]
    error = compare_outputs(ref, engine.run(feeds), budget)["eps"]["required_rtol"]
    torch_error = compare_outputs(ref, TorchEngine(net, "face_unet", precision="bf16").run(feeds),
                                  budget)["eps"]["required_rtol"]
    assert error < 1.3 * torch_error, (error, torch_error)


def _runtime_precisions(engine, key: str = "runtimePrecision") -> dict:
    out = {}
    for op in engine.compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        for name in rt["originalLayersNames"].astype(str).split(","):
            out[name] = rt[key].astype(str)
    return out


@pytest.fixture
def fast_recipes(monkeypatch):
    monkeypatch.setitem(calibration.RECIPES, "digit_unet",
                        {**calibration.RECIPES["digit_unet"], "steps": 4, "per_digit": 1, "every": 2})


def test_int8_runs_the_qdq_graph_ort_runs(fast_recipes, tmp_path):
    net = random_model("digit_unet", {"n_feat": 16})
    engine = open_engine("digit_unet", net, backend="openvino", precision="int8", threads=1,
                         cache_dir=tmp_path)
    ort = open_engine("digit_unet", net, backend="ort", precision="int8", threads=1, cache_dir=tmp_path)
    assert engine.onnx_entry.path == ort.cache_entry.path  # the same graph, the same calibration
    ops = [n.op_type for n in onnx.load(str(engine.path)).graph.node]
    assert ops.count("QuantizeLinear") > 10 and engine.precision == "int8"
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32  # the rest in f32
    stats = _errors("digit_unet", net, engine, precision="int8")
    assert all(s["passed"] for s in stats.values()), stats
    feeds = get_spec("digit_unet").example_inputs(3, 1)
    same = compare_outputs(ort.run(feeds), engine.run(feeds), 0.02)
    assert all(s["passed"] for s in same.values()), same


def test_an_instruction_set_ceiling_is_part_of_the_cache_key(tmp_path, monkeypatch):
    """ONEDNN_MAX_CPU_ISA changes the kernels the plugin compiles (AMX's or AVX512-BF16's) while the CPU's
    name and capabilities stay the same: a model compiled under one ceiling is not imported under another."""
    net = small_net("digit_classifier")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    first = open_engine("digit_classifier", net, backend="openvino", threads=1, cache_dir=tmp_path)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    limited = open_engine("digit_classifier", net, backend="openvino", threads=1, cache_dir=tmp_path)
    assert limited.cache_entry.built and limited.cache_entry.path != first.cache_entry.path
    assert json.loads(limited.cache_entry.manifest.read_text())["parts"]["isa_limit"] == {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    again = open_engine("digit_classifier", net, backend="openvino", threads=1, cache_dir=tmp_path)
    assert again.cache_entry.reason == "hit" and again.cache_entry.path == limited.cache_entry.path


def test_cache_hit_threads_and_a_corrupt_blob_rebuilt(tmp_path):
    net = small_net("digit_classifier")
    first = open_engine("digit_classifier", net, backend="openvino", threads=1, cache_dir=tmp_path)
    entry = first.cache_entry
    assert entry.built and entry.path.is_relative_to(tmp_path / "openvino")
    parts = json.loads(entry.manifest.read_text())["parts"]
    assert parts["precision"] == "fp32" and parts["openvino"] == openvino.get_version()
    assert parts["graph_sha256"] == json.loads(first.onnx_entry.manifest.read_text())["sha256"]
    assert "INFERENCE_NUM_THREADS" not in parts["config"] and parts["cpu"]
    feeds = get_spec("digit_classifier").example_inputs(4, 0)
    before = first.run(feeds)["logits"]

    second = open_engine("digit_classifier", net, backend="openvino", threads=2, cache_dir=tmp_path)
    assert not second.cache_entry.built and second.cache_entry.reason == "hit"
    assert second.compiled.get_property("INFERENCE_NUM_THREADS") == 2  # threads are applied on import
    assert second.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    torch.testing.assert_close(second.run(feeds)["logits"], before, rtol=0, atol=0)

    blob = bytearray(entry.path.read_bytes())  # one byte flipped, same size: OpenVINO would import it
    blob[len(blob) // 2] ^= 0xFF
    entry.path.write_bytes(bytes(blob))
    third = open_engine("digit_classifier", net, backend="openvino", threads=1, cache_dir=tmp_path)
    assert third.cache_entry.built and "hash" in third.cache_entry.reason
    torch.testing.assert_close(third.run(feeds)["logits"], before, rtol=0, atol=0)
    fourth = open_engine("digit_classifier", net, backend="openvino", threads=1, cache_dir=tmp_path)
    assert fourth.cache_entry.reason == "hit"

    # bytes that match their manifest but OpenVINO will not import (another build's blob): rebuilt too
    entry.path.write_bytes(b"not an OpenVINO blob" * 64)
    manifest = json.loads(entry.manifest.read_text())
    manifest.update(sha256=file_sha256(entry.path), bytes=entry.path.stat().st_size)
    entry.manifest.write_text(json.dumps(manifest))
    fifth = open_engine("digit_classifier", net, backend="openvino", threads=1, cache_dir=tmp_path)
    assert fifth.cache_entry.built
    torch.testing.assert_close(fifth.run(feeds)["logits"], before, rtol=0, atol=0)
    again = open_engine("digit_classifier", net, backend="openvino", cache_dir=tmp_path)
    assert again.cache_entry.reason == "hit"
    if has_bf16():
        bf16 = open_engine("digit_classifier", net, backend="openvino", precision="bf16", cache_dir=tmp_path)
        assert bf16.cache_entry.built and bf16.cache_entry.path != entry.path


def test_onnx_files_and_openvinos_defaults(exported):
    _, path = exported("digit_classifier")
    engine = open_engine("digit_classifier", path, backend="openvino")  # the file's precision
    assert engine.backend == "openvino" and engine.precision == "fp32"
    assert engine.metadata["model"] == "digit_classifier"
    peer = open_engine("digit_classifier", path, backend="openvino", defaults=True, threads=1)
    chosen = peer.compiled.get_property("INFERENCE_PRECISION_HINT")
    assert peer.precision == ("bf16" if chosen == openvino.Type.bf16 else "fp32")
    assert peer.precision == ("bf16" if has_bf16() else "fp32")  # the plugin's default follows the CPU
    assert peer.describe()["inference_precision"] == "plugin default" and peer.describe()["islands"] == []


def test_refusals(exported, tmp_path, monkeypatch):
    net, path = exported("digit_classifier")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(Hw2rtError, match="openvino backend runs on the CPU only, not cuda"):
            open_engine("digit_classifier", net, backend="openvino", device=device)
    with pytest.raises(Hw2rtError, match="CPU only"):
        OpenVinoEngine(path, device="cuda")
    for precision in ("fp16", "fp8"):
        with pytest.raises(Hw2rtError, match=f"runs fp32, bf16, int8, not {precision}.*--backend ort"):
            open_engine("digit_classifier", net, backend="openvino", precision=precision)
    with pytest.raises(Hw2rtError, match="torch.compile applies to the torch backend, not openvino"):
        open_engine("digit_classifier", net, backend="openvino", compile=True)
    with pytest.raises(Hw2rtError, match="memory_format applies to the torch backend, not openvino"):
        open_engine("digit_classifier", net, backend="openvino", memory_format="channels_last")
    with pytest.raises(Hw2rtError, match="apply to the openvino backend, not ort"):
        open_engine("digit_classifier", net, backend="ort", defaults=True)
    with pytest.raises(Hw2rtError, match="defaults run the fp32 graph"):
        open_engine("digit_classifier", net, backend="openvino", precision="bf16", defaults=True)
    with pytest.raises(Hw2rtError, match="is an fp32 graph, but int8 was asked for"):
        OpenVinoEngine(path, precision="int8")
    _, fp16 = exported("digit_classifier", "fp16")
    with pytest.raises(Hw2rtError, match="is an fp16 graph; the openvino backend runs the fp32 graph"):
        OpenVinoEngine(fp16)
    with pytest.raises(Hw2rtError, match="holds a digit_classifier graph, but this needs a dann"):
        open_engine("dann", path, backend="openvino")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(Hw2rtError, match="truncated.onnx: not a loadable ONNX model"):
        OpenVinoEngine(truncated)
    with pytest.raises(Hw2rtError, match="missing.onnx: ONNX file not found"):
        OpenVinoEngine(tmp_path / "missing.onnx")
    monkeypatch.setattr(ov_engine, "cpu_capabilities", lambda: ["FP32", "INT8"])  # an AVX2-only CPU
    with pytest.raises(Hw2rtError, match="bf16 on openvino needs a CPU with bf16 hardware.*use fp32"):
        open_engine("digit_classifier", path, backend="openvino", precision="bf16")


def test_cli_parity_on_openvino_exits_0(tmp_path):
    report = tmp_path / "parity.json"
    args = ["parity", "--model", "digit_unet", "--backend", "openvino", "--device", "cpu", "--threads", "1",
            "--steps", "10", "--trajectory", "--json", str(report)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "parity digit_unet: openvino fp32 cpu vs torch fp32 cpu: PASSED" in result.output
    saved = json.loads(report.read_text())
    assert saved["candidate"]["engine"] == "OpenVinoEngine" and saved["trajectory"]["passed"]


def test_localize_compares_the_tensors_openvino_computes():
    """`parity --localize` on openvino: every intermediate tensor as OpenVINO computes it (its precision and
    islands), against the fp32 reference graph on ONNX Runtime; under bf16 they carry bf16's rounding, which
    ONNX Runtime running the same fp32 graph would not show."""
    fp32 = run_parity("digit_classifier", backend="openvino", precision="fp32", device="cpu", threads=1,
                      e2e=False, localize=True)["localize"]
    assert "skipped" not in fp32 and fp32["compared"] > 10 and fp32["first_divergent"] is None
    assert max(r["rel"] for r in fp32["nodes"]) < 1e-5
    if has_bf16():
        bf16 = run_parity("digit_classifier", backend="openvino", precision="bf16", device="cpu", threads=1,
                          e2e=False, localize=True)["localize"]
        assert bf16["compared"] == fp32["compared"] and max(r["rel"] for r in bf16["nodes"]) > 1e-3


@BF16
def test_localize_runs_the_marked_graph_of_a_network_with_islands(exported):
    """The face UNet's bf16 has islands: localize re-marks the graph as the engine does (the network's own
    weighted modules found by its model name), so the timestep embedding's tensors are fp32-exact while the
    bf16 convolutions carry bf16's rounding."""
    from hw2rt.verify.localize import localize

    _, path = exported("face_unet")
    engine = OpenVinoEngine(path, model="face_unet", precision="bf16", threads=1)
    feeds = get_spec("face_unet").example_inputs(2, 0, **DIMS["face_unet"])
    report = localize(path, path, feeds, rel_budget=BUDGETS["bf16"]["per_call_rel_max_abs"], threads=1,
                      engine=engine, chunk=4096)  # one fetch: one compile
    assert report["compared"] > 100
    rel = {r["node"]: r["rel"] for r in report["nodes"]}
    assert rel["/time/time.0/Sin"] < 1e-5 and rel["/time/time.0/Cos"] < 1e-5, rel
    assert rel["/down2/resblocks/conv1/Conv"] > 1e-3, rel


def test_bench_runners_open_the_engines_and_the_peer_is_never_a_goal():
    from hw2rt.bench import report, runners
    from hw2rt.bench.suites import make_suite

    cpu = set(make_suite("cpu").backends)
    assert {"openvino", "openvino-bf16", "openvino-int8", "openvino-default"} <= cpu
    assert not any(n.startswith("openvino") for n in make_suite("quick").backends)  # quick stays quick
    net = small_net("dann")
    plain = runners.open_runner("openvino", "dann", net, device="cpu", threads=1)
    peer = runners.open_runner("openvino-default", "dann", net, device="cpu", threads=1)
    assert plain.describe()["inference_precision"] == "f32"
    assert peer.describe()["inference_precision"] == "plugin default"
    assert runners.graded_precision("openvino-default", "cpu") == peer.precision
    assert runners.compute_precision("openvino-default", "cpu") == ("bf16" if has_bf16() else "fp32")
    assert runners.graded_precision("openvino-int8", "cpu") == "int8"
    assert "CPU" in runners.unavailable("openvino", "cuda")
    if not has_bf16():
        assert "bf16" in runners.unavailable("openvino-bf16", "cpu")
    rows = [{"backend": "openvino-default", "median_ms": 1.0, "parity_passed": True},
            {"backend": "openvino", "median_ms": 2.0, "parity_passed": True}]
    assert report.fastest(rows) == "openvino"
