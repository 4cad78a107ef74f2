"""The TensorRT backend where no GPU is: imports, clear errors, and the build/cache/run plumbing
against a stand-in `tensorrt` module."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from hw2rt.engines import open_engine
from hw2rt.engines.graphs import (
    GraphedEngine,
)
from hw2rt.errors import Hw2rtError
from hw2rt.models import get_spec
from hw2rt.verify.parity import random_model

ROOT = Path(__file__).resolve().parents[2]


# --- imports without CUDA / TensorRT --------------------------------------------------------------

def test_gpu_modules_import_without_cuda_or_tensorrt():
    code = ("import sys; sys.modules['tensorrt'] = None\n"
            "import hw2rt.engines.trt, hw2rt.engines.graphs\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_missing_tensorrt_is_a_clear_error(monkeypatch):
    from hw2rt.engines import trt

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    with pytest.raises(Hw2rtError, match="needs TensorRT, which is not installed"):
        trt.import_tensorrt()
    assert trt.tensorrt_version() is None


def test_old_tensorrt_is_refused(monkeypatch):
    from hw2rt.engines import trt

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    with pytest.raises(Hw2rtError, match=r"TensorRT 8\.6\.1 is too old.*>= 10"):
        trt.import_tensorrt()


def test_trt_factory_path_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    net = random_model("digit_unet", {"n_feat": 8})
    with pytest.raises(Hw2rtError, match="TensorRT"):
        open_engine("digit_unet", net, backend="trt", device="cuda")
    from hw2rt.engines.trt import open_trt_engine
    with pytest.raises(Hw2rtError, match="not installed"):
        open_trt_engine("digit_unet", net, device="cuda")


# --- the TensorRT code paths under the strict fake of the real 10.x and 11.x API -------------------------

class _Stream:
    def __init__(self, handle):
        self.cuda_stream = handle

    def wait_stream(self, other):
        pass


@pytest.fixture(params=[10, 11], ids=["trt10", "trt11"])
def fake_trt(request, monkeypatch):
    """(module, simulation) of TensorRT `major` as `import tensorrt` sees it; torch's CUDA calls that the
    TensorRT backend makes stand in on the CPU (CPU tensors' data_ptr() as device pointers)."""
    from hw2rt.engines import trt as trt_mod
    from tests.engines.trt_fake import Simulation, make_tensorrt
    from tests.engines.trt_surface import missing_reason, surface

    reason = missing_reason(request.param)
    if reason is not None and "gcc" in reason:
        pytest.skip(reason)
    assert reason is None, reason  # the wheels are part of `make setup`: missing ones are a failure
    sim = Simulation()
    fake = make_tensorrt(surface(request.param), sim)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_mod, "_require_cuda", lambda device: torch.device("cpu"))
    monkeypatch.setattr(trt_mod, "gpu_identity", lambda device="cuda": "Fake GPU sm_90")
    monkeypatch.setattr(trt_mod, "compute_capability", lambda device="cuda": (9, 0))
    monkeypatch.setattr(torch.cuda, "device", lambda device: __import__("contextlib").nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream(7))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream(0))
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: _Stream(0))
    return fake, sim


def test_trt_build_cache_and_run_under_the_real_api(fake_trt, tmp_path):
    from hw2rt.engines import trt as trt_mod

    fake, sim = fake_trt
    net = random_model("digit_unet", {"n_feat": 8})
    sim.references["digit_unet"] = net
    engine = trt_mod.open_trt_engine("digit_unet", net, max_batch=6, opt_batch=4, cache_dir=tmp_path,
                                     opset=18)
    # STRONGLY_TYPED is 1 on 10.x and 0 on 11.x
    strongly_typed = 1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert len(sim.builds) == 1 and sim.builds[0]["flags"] == strongly_typed
    assert sim.builds[0]["opt_level"] == 3
    assert engine.max_batch == 6 and engine.backend == "trt" and engine.precision == "fp16"
    assert engine.cache_entry.built and engine.cache_entry.path.name == "model.plan"
    cache_name = f"timing-trt{fake.__version__}-fake-gpu-sm-90.cache"
    assert (tmp_path / "trt" / cache_name).read_bytes() == b"TIMING"
    plan = json.loads(engine.cache_entry.path.read_bytes())
    assert plan["profile"]["x"] == [[1, 3, 28, 28], [4, 3, 28, 28], [6, 3, 28, 28]]
    assert plan["io"]["x"] == {"mode": "INPUT", "dtype": "FLOAT"} and plan["io"]["c"]["dtype"] == "INT64"

    feeds = get_spec("digit_unet").example_inputs(5)
    out = engine.run(feeds)
    ctx = sim.contexts[-1]._s
    assert out["eps"].shape == (5, 3, 28, 28) and out["eps"].dtype == torch.float32
    assert ctx["shapes"]["x"] == (5, 3, 28, 28) and ctx["shapes"]["c"] == (5,)
    assert ctx["addresses"]["eps"] == out["eps"].data_ptr()
    assert ctx["streams"] == [7]  # the caller is on the default stream: the engine's own stream is used
    with torch.inference_mode():  # the data path: the inputs hw2rt bound, the reference's result read back
        assert torch.equal(out["eps"], net(*(feeds[s.name] for s in get_spec("digit_unet").inputs)))
    with pytest.raises(Hw2rtError, match="max_batch 6"):
        engine.run(get_spec("digit_unet").example_inputs(7))
    graphed = GraphedEngine(engine)  # buckets up to the profile's max; larger requests are split
    nine = get_spec("digit_unet").example_inputs(9, seed=3)
    with torch.inference_mode():
        want = net(*(nine[s.name] for s in get_spec("digit_unet").inputs))
    torch.testing.assert_close(graphed.run(nine)["eps"], want, rtol=1e-5, atol=1e-6)
    # 9 rows: a full bucket of 6, then 3 padded to 4
    assert [e["x"][0] for e in sim.executions[-2:]] == [6, 4]
    graphed.run(get_spec("digit_unet").example_inputs(3))
    # One execution context per batch shape (a CUDA graph captured through a context keeps its shapes and
    # addresses), each on the engine's one scratch buffer.
    contexts = [c._s for c in sim.contexts]
    assert sorted(c["batches"][0] for c in contexts) == [4, 5, 6]
    assert all(len(set(c["batches"])) == 1 for c in contexts) and len(contexts[-1]["batches"]) == 2
    assert {c["strategy"] for c in contexts} == {fake.ExecutionContextAllocationStrategy.USER_MANAGED}
    assert {c["memory"] for c in contexts} == {(engine._scratch.data_ptr(), sim.scratch_bytes)}

    # Second open: a verified cache hit, no build; the timing cache is fed back into a rebuild.
    again = trt_mod.open_trt_engine("digit_unet", net, max_batch=6, opt_batch=4, cache_dir=tmp_path, opset=18)
    assert not again.cache_entry.built and len(sim.builds) == 1
    engine.cache_entry.path.write_bytes(b"corrupt")
    rebuilt = trt_mod.open_trt_engine("digit_unet", net, max_batch=6, opt_batch=4, cache_dir=tmp_path,
                                      opset=18)
    assert rebuilt.cache_entry.built and len(sim.builds) == 2 and sim.builds[1]["timing_in"] == b"TIMING"


def test_open_engine_serves_trt_through_the_one_factory(fake_trt, tmp_path):
    _, sim = fake_trt
    net = random_model("face_unet", {"base": 32, "norm_groups": 8})
    sim.references["face_unet"] = net
    engine = open_engine("face_unet", net, backend="trt", precision="fp16", device="cuda", graphs=False,
                         dims={"height": 32, "width": 32}, max_batch=2, cache_dir=tmp_path)
    assert engine.describe()["engine"] == "TrtEngine" and engine.max_batch == 2
    feeds = get_spec("face_unet").example_inputs(2, height=32, width=32)
    with torch.inference_mode():
        want = net(feeds["x"], feeds["t"])
    assert torch.equal(engine.run(feeds)["eps"], want)
    assert json.loads(engine.cache_entry.path.read_bytes())["profile"]["x"][2] == [2, 3, 32, 32]


def test_the_face_profile_is_tuned_for_the_jobs_calls(fake_trt, tmp_path):
    """The face UNet's profile spans 1..16 (ModelSpec.max_batch), its kernels chosen for 11 rows (the
    interpolation's; the face job calls with 10), not for the 16 no job calls with."""
    _, sim = fake_trt
    net = random_model("face_unet", {"base": 32, "norm_groups": 8})
    sim.references["face_unet"] = net
    engine = open_engine("face_unet", net, backend="trt", device="cuda", dims={"height": 32, "width": 32},
                         cache_dir=tmp_path)
    profile = json.loads(engine.engine.cache_entry.path.read_bytes())["profile"]["x"]
    assert [shape[0] for shape in profile] == [1, 11, 16]
    assert engine.runner.buckets == (1, 2, 4, 8, 10, 11, 16)


def test_int8_builds_the_symmetric_qdq_graph_as_a_strongly_typed_plan(fake_trt, tmp_path, monkeypatch):
    """TensorRT's explicit quantization takes int8 with zero point 0 only: the trt target's graph."""
    import onnx
    from onnx import numpy_helper

    from hw2rt.engines import trt as trt_mod
    from hw2rt.runtime import calibration

    monkeypatch.setitem(calibration.RECIPES, "digit_unet", {**calibration.RECIPES["digit_unet"], "steps": 2,
                                                            "per_digit": 1, "seeds": [1], "every": 1})
    fake, sim = fake_trt
    net = random_model("digit_unet", {"n_feat": 8})
    sim.references["digit_unet"] = net
    engine = trt_mod.open_trt_engine("digit_unet", net, precision="int8", max_batch=4, cache_dir=tmp_path)
    assert engine.precision == "int8" and len(sim.builds) == 1
    assert sim.builds[0]["flags"] == 1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    (graph,) = (tmp_path / "onnx").glob("digit_unet-int8-trt-*/model.onnx")
    model = onnx.load(str(graph))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quants = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zero_points = [inits[n.input[2]] for n in quants]
    assert quants and all(z.dtype.name == "int8" and not z.any() for z in zero_points)
    assert not trt_mod.unsupported_ops(graph)


def test_fp8_builds_the_e4m3_qdq_graph_on_fp8_gpus_only(fake_trt, tmp_path, monkeypatch):
    """fp8: the same calibration as int8 (the trt target's graph rewritten), a strongly typed plan on
    compute capability >= 8.9; an older GPU is refused before any export."""
    import onnx

    from hw2rt.engines import trt as trt_mod
    from hw2rt.runtime import calibration

    monkeypatch.setitem(calibration.RECIPES, "digit_unet", {**calibration.RECIPES["digit_unet"], "steps": 2,
                                                            "per_digit": 1, "seeds": [1], "every": 1})
    fake, sim = fake_trt
    net = random_model("digit_unet", {"n_feat": 8})
    sim.references["digit_unet"] = net
    monkeypatch.setattr(trt_mod, "compute_capability", lambda device="cuda": (8, 0))
    with pytest.raises(Hw2rtError, match=r"fp8 needs .*compute capability >= 8\.9.*sm_80"):
        trt_mod.open_trt_engine("digit_unet", net, precision="fp8", max_batch=4, cache_dir=tmp_path)
    assert not sim.builds and not (tmp_path / "onnx").exists()
    monkeypatch.setattr(trt_mod, "compute_capability", lambda device="cuda": (9, 0))
    engine = trt_mod.open_trt_engine("digit_unet", net, precision="fp8", max_batch=4, cache_dir=tmp_path)
    assert engine.precision == "fp8" and len(sim.builds) == 1
    assert sim.builds[0]["flags"] == 1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    (graph,) = (tmp_path / "onnx").glob("digit_unet-fp8-*/model.onnx")
    model = onnx.load(str(graph))
    points = {i.name: i.data_type for i in model.graph.initializer}
    assert {points[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"} == {
        onnx.TensorProto.FLOAT8E4M3FN}
    assert not trt_mod.unsupported_ops(graph)


def test_a_graph_tensorrt_cannot_parse_is_one_line_naming_the_errors(fake_trt, tmp_path):
    _, sim = fake_trt
    sim.parse_ok = False
    net = random_model("dann")
    with pytest.raises(Hw2rtError, match=r"could not parse the ONNX graph: In node 0 .*INVALID_GRAPH"):
        open_engine("dann", net, backend="trt", device="cuda", graphs=False, cache_dir=tmp_path)


def test_an_operator_tensorrt_does_not_import_is_named_before_any_build(fake_trt, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from hw2rt.engines.trt import build_plan, unsupported_ops

    _, sim = fake_trt
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert unsupported_ops(path) == ["Det"]
    with pytest.raises(Hw2rtError, match=r"det.onnx: operators TensorRT's ONNX parser does not import: Det"):
        build_plan(path, "dann", max_batch=1)
    assert sim.builds == []


def test_trt_profile_uses_dims_for_the_face_unet():
    from hw2rt.engines.trt import profile_shapes

    shapes = profile_shapes(get_spec("face_unet"), 10, dims={"height": 256, "width": 256})
    assert shapes["x"] == ((1, 3, 256, 256), (10, 3, 256, 256), (10, 3, 256, 256))
    assert shapes["t"] == ((1,), (10,), (10,))
    with pytest.raises(Hw2rtError):
        profile_shapes(get_spec("digit_unet"), 4, opt_batch=5)


