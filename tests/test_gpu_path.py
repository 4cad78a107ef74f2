"""The GPU path where no GPU is: imports, bucket/padding/splitting logic, the TensorRT plumbing
against a stand-in `tensorrt` module, and `benchmarks/gpu_check.py --cpu-smoke` end to end.

What only a GPU can show (CUDA graphs, TensorRT plans) runs in the GPU-only tests at the end
and in benchmarks/gpu_check.sh on a lent GPU machine.
"""
import itertools
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
    BucketedRunner,
    GraphedEngine,
    _flatten,
    bucket_sizes,
    pad_rows,
    pick_bucket,
    plan_chunks,
)
from hw2rt.engines.torch import FP32_ISLANDS, TorchEngine, reduced_precision_module
from hw2rt.errors import Hw2rtError
from hw2rt.models import get_spec
from hw2rt.parity import BUDGETS, random_model

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (CUDA graphs, fp16 kernels)")


def _has_tensorrt():
    try:
        from hw2rt.engines.trt import import_tensorrt
        import_tensorrt()
        return True
    except Hw2rtError:
        return False


needs_trt = pytest.mark.skipif(not (CUDA and _has_tensorrt()), reason="needs TensorRT >= 10 and a CUDA GPU")


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


# --- buckets, padding, splitting (CPU) -----------------------------------------------------------

def test_bucket_sizes_and_choice():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(10) == (1, 2, 4, 8, 10)
    assert bucket_sizes(2000)[-2:] == (1024, 2000)
    b = bucket_sizes(10)
    assert [pick_bucket(n, b) for n in range(1, 11)] == [1, 2, 4, 4, 8, 8, 8, 8, 10, 10]
    assert pick_bucket(11, b) == 10
    with pytest.raises(ValueError):
        bucket_sizes(0)
    with pytest.raises(ValueError):
        pick_bucket(0, b)


def test_plan_chunks_splits_above_the_largest_bucket():
    b = (1, 2, 4, 8)
    assert plan_chunks(3, b) == [(0, 3, 4)]
    assert plan_chunks(8, b) == [(0, 8, 8)]
    assert plan_chunks(9, b) == [(0, 8, 8), (8, 9, 1)]
    assert plan_chunks(19, b) == [(0, 8, 8), (8, 16, 8), (16, 19, 4)]
    for n in range(1, 40):
        plan = plan_chunks(n, b)
        assert plan[0][0] == 0 and plan[-1][1] == n
        assert all(stop - start <= bucket and bucket in b for start, stop, bucket in plan)
        assert all(p[1] == q[0] for p, q in itertools.pairwise(plan))


def test_pad_rows_repeats_the_last_row():
    t = torch.arange(6.0).reshape(3, 2)
    p = pad_rows(t, 5)
    assert p.shape == (5, 2)
    assert torch.equal(p[:3], t) and torch.equal(p[3], t[2]) and torch.equal(p[4], t[2])
    assert pad_rows(t, 3) is t
    with pytest.raises(ValueError):
        pad_rows(t, 2)


@pytest.mark.parametrize("buckets", [(1, 2, 4, 8), (1, 3, 5)])
def test_bucketed_runner_equals_the_unbatched_function(buckets):
    seen = []

    def fn(x, t, scale=1.0):
        seen.append(x.shape[0])
        return {"y": x * scale + t[:, None, None].float(), "t2": t * 2}

    runner = BucketedRunner(fn, buckets)
    top = max(buckets)
    g = torch.Generator().manual_seed(0)
    for n in range(1, top + 4):
        x = torch.randn(n, 3, 4, generator=g)
        t = torch.randint(0, 100, (n,), generator=g)
        seen.clear()
        out = runner(x, t, scale=0.5)
        ref = fn(x, t, scale=0.5)
        assert set(out) == {"y", "t2"}
        assert torch.equal(out["y"], ref["y"]) and torch.equal(out["t2"], ref["t2"])
        calls = seen[:-1]  # the last entry is the reference call
        assert all(b in buckets for b in calls), calls
        assert sum(c for c in calls) >= n
        if n <= top:
            assert calls == [pick_bucket(n, buckets)]  # one call, padded to the nearest bucket
        else:
            assert calls[0] == top and len(calls) == len(plan_chunks(n, buckets))


def test_bucketed_runner_pads_with_real_rows_and_keeps_structure():
    got = {}

    def fn(pair):
        a, b = pair
        got["a"] = a.clone()
        return (a + 1, [b.sum(1)])

    runner = BucketedRunner(fn, (4,))
    a, b = torch.arange(3.0)[:, None], torch.ones(3, 2)
    out = runner((a, b))
    assert isinstance(out, tuple) and isinstance(out[1], list)
    assert torch.equal(out[0], a + 1) and torch.equal(out[1][0], torch.full((3,), 2.0))
    assert torch.equal(got["a"][:, 0], torch.tensor([0.0, 1.0, 2.0, 2.0]))  # padded with the last row
    assert runner.calls == 1 and runner.graph_count == 0  # CPU: no graphs


def test_bucketed_runner_rejects_mixed_batches():
    runner = BucketedRunner(lambda x, y: x, (2,))
    with pytest.raises(ValueError, match="same batch size"):
        runner(torch.ones(2, 1), torch.ones(3, 1))
    with pytest.raises(ValueError, match="tensor"):
        runner(1, 2)


class _RecordedGraph:
    """Stands in for a CUDA graph on the CPU: replay re-runs the recorded call and writes its
    results into the static outputs, as a graph replay overwrites its captured buffers."""

    def __init__(self, fn, args, kwargs, outputs):
        self.fn, self.args, self.kwargs, self.outputs = fn, args, kwargs, outputs
        self.replays = 0

    def replay(self):
        self.replays += 1
        fresh: list = []
        _flatten(self.fn(*self.args, **self.kwargs), fresh)
        for static, new in zip(self.outputs, fresh):
            static.copy_(new)


def _recording_runner(fn, buckets, fail=False):
    runner = BucketedRunner(fn, buckets)
    runner._graph_devices = ("cpu",)
    graphs = []

    def record(args, kwargs, device):
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        out = fn(*args, **kwargs)
        leaves: list = []
        _flatten(out, leaves)
        graphs.append(_RecordedGraph(fn, args, kwargs, leaves))
        return graphs[-1], out

    runner._record = record
    return runner, graphs


def test_graph_path_static_buffers_padding_and_replay():
    calls = []

    def fn(feeds):
        calls.append(feeds["x"].shape[0])
        return {"y": feeds["x"] * 2 + feeds["t"][:, None]}

    runner, graphs = _recording_runner(fn, (2, 4))
    g = torch.Generator().manual_seed(0)
    for n in (3, 1, 4, 3, 9, 2):
        x, t = torch.randn(n, 5, generator=g), torch.randn(n, generator=g)
        out = runner({"x": x, "t": t})
        torch.testing.assert_close(out["y"], x * 2 + t[:, None], rtol=0, atol=0)
        y_first = out["y"].clone()
        runner({"x": x + 1, "t": t})  # the next replay overwrites the static outputs ...
        assert torch.equal(out["y"], y_first)  # ... but results handed out were cloned
    assert runner.graph_count == 2 and len(graphs) == 2  # one capture per bucket, then replays only
    assert sorted(gr.args[0]["x"].shape[0] for gr in graphs) == [2, 4]
    assert sum(gr.replays for gr in graphs) == runner.calls
    # The static input of bucket 4 was padded with copies of the last real row.
    big = next(gr for gr in graphs if gr.args[0]["x"].shape[0] == 4)
    last = runner({"x": torch.arange(15.0).reshape(3, 5), "t": torch.zeros(3)})
    assert last["y"].shape == (3, 5) and torch.equal(big.args[0]["x"][3], big.args[0]["x"][2])


def test_graph_capture_failure_falls_back_to_eager():
    runner, _ = _recording_runner(lambda x: x + 1, (4,), fail=True)
    with pytest.warns(UserWarning, match="capture failed"):
        out = runner(torch.ones(3, 2))
    assert torch.equal(out, torch.full((3, 2), 2.0))
    assert runner.graphs is False and "stream is capturing" in runner.graph_error
    assert torch.equal(runner(torch.zeros(5, 2)), torch.ones(5, 2))  # later calls run eagerly


def test_graphed_engine_on_cpu_equals_the_engine():
    net = random_model("digit_unet", {"n_feat": 8})
    engine = TorchEngine(net, "digit_unet")
    graphed = GraphedEngine(engine, (1, 2, 4))
    assert graphed.max_batch is None and graphed.model == "digit_unet" and "buckets" in graphed.name
    spec = get_spec("digit_unet")
    for n in range(1, 8):
        feeds = spec.example_inputs(n, seed=n)
        ref = engine.run(feeds)["eps"]
        out = graphed.run(feeds)["eps"]
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    x = spec.example_inputs(3)
    eps = graphed(x["x"], x["c"], x["t"], x["mask"])  # positional, as the samplers call it
    assert eps.shape == (3, 3, 28, 28)
    with pytest.raises(Hw2rtError, match="missing"):
        graphed.run({"x": x["x"]})
    graphed.close()
    assert engine.closed


# --- the torch backend's reduced-precision policy (CPU stand-in for CUDA) -------------------------

def test_reduced_precision_module_keeps_islands_fp32_and_the_original_intact():
    net = random_model("face_unet", {"base": 32, "norm_groups": 8})
    inv_freq = net.time[0].inv_freq.clone()
    half = reduced_precision_module(net, "face_unet", "fp16")
    assert FP32_ISLANDS["face_unet"] == ("time",)
    assert half.down1.weight.dtype == torch.float16
    assert half.time[0].inv_freq.dtype == torch.float32 and torch.equal(half.time[0].inv_freq, inv_freq)
    assert half.time[1].weight.dtype == torch.float32
    assert net.down1.weight.dtype == torch.float32 and net.training is False


@pytest.mark.parametrize("model,config", [("face_unet", {"base": 32, "norm_groups": 8}), ("digit_unet", {"n_feat": 8}),
                                          ("dann", {}), ("digit_classifier", {})])
def test_torch_reduced_precision_matches_the_reference(model, config):
    """The fp16 module the torch backend runs on CUDA, run here by torch's CPU fp16 kernels, and bf16
    behind the bucketing wrapper: within their per-call budgets of the fp32 reference."""
    net = random_model(model, config)
    spec = get_spec(model)
    dims = {"height": 32, "width": 32} if model == "face_unet" else {}
    feeds = spec.example_inputs(3, **dims)
    ref = TorchEngine(net, model).run(feeds)
    half = reduced_precision_module(net, model, "fp16")
    with torch.inference_mode():
        out = half(*[v.half() if v.is_floating_point() else v for v in feeds.values()])
    fp16 = dict(zip([s.name for s in spec.outputs], out if isinstance(out, tuple) else (out,)))
    bf16_engine = open_engine(model, net, backend="torch", precision="bf16", graphs=True, max_batch=2)
    assert bf16_engine.describe()["graphs"] and bf16_engine.describe()["buckets"] == [1, 2]
    bf16 = bf16_engine.run(feeds)  # 3 rows: split into buckets of 2 and 1
    for s in spec.outputs:
        assert bf16[s.name].dtype == torch.float32 and bf16[s.name].is_contiguous()
        scale = ref[s.name].abs().max()
        assert (fp16[s.name].float() - ref[s.name]).abs().max() <= BUDGETS["fp16"]["per_call_rel_max_abs"] * scale
        assert (bf16[s.name] - ref[s.name]).abs().max() <= BUDGETS["bf16"]["per_call_rel_max_abs"] * scale


# --- TensorRT plumbing against a stand-in module ---------------------------------------------------

def _fake_tensorrt(version="10.9.0"):
    """Just enough of the TensorRT 10 Python API to drive build_plan / TrtEngine without a GPU."""
    import onnx

    trt = types.SimpleNamespace(__version__=version, builds=[], contexts=[])
    trt.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda self, level=2: None})
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.DataType = types.SimpleNamespace(FLOAT="f32", HALF="f16", INT64="i64", INT32="i32", BOOL="b")
    dtypes = {"float32": "f32", "float16": "f16", "int64": "i64"}

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.outputs = flags, [], []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i])

    class Parser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            graph = onnx.load(path, load_external_data=False).graph
            self.network.inputs = [v.name for v in graph.input]
            self.network.outputs = [v.name for v in graph.output]
            return True

    class Cache:
        def serialize(self):
            return b"TIMING"

    class Config:
        builder_optimization_level = 3

        def create_timing_cache(self, data):
            self.cache_in = data
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            self.profile = profile

        def set_memory_pool_limit(self, pool, size):
            pass

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.builds.append({"flags": network.flags, "opt_level": config.builder_optimization_level,
                               "timing_in": config.cache_in})
            spec = get_spec("digit_unet")
            io = {s.name: ("in", dtypes[str(s.dtype).removeprefix("torch.")]) for s in spec.inputs}
            io.update({s.name: ("out", "f32") for s in spec.outputs})
            return json.dumps({"profile": config.profile.shapes, "io": io}).encode()

    class Context:
        def __init__(self, plan):
            self.plan, self.shapes, self.addresses, self.streams = plan, {}, {}, []
            trt.contexts.append(self)

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def get_tensor_shape(self, name):
            return (self.shapes["x"][0], 3, 28, 28)

        def execute_async_v3(self, stream):
            self.streams.append(stream)
            return True

    class CudaEngine:
        def __init__(self, plan):
            self.plan = json.loads(plan)
            self.names = list(self.plan["io"])

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            return self.plan["io"][name][0]

        def get_tensor_dtype(self, name):
            return self.plan["io"][name][1]

        def get_tensor_profile_shape(self, name, profile):
            return self.plan["profile"][name]

        def create_execution_context(self):
            return Context(self.plan)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return CudaEngine(plan)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


class _Stream:
    def __init__(self, handle):
        self.cuda_stream = handle

    def wait_stream(self, other):
        pass


def test_trt_build_cache_and_run_against_a_stand_in(monkeypatch, tmp_path):
    from hw2rt.engines import trt as trt_mod

    fake = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_mod, "_require_cuda", lambda device: torch.device("cpu"))
    monkeypatch.setattr(trt_mod, "gpu_identity", lambda device="cuda": "Fake GPU sm_90")
    monkeypatch.setattr(torch.cuda, "device", lambda device: __import__("contextlib").nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _Stream(7))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _Stream(0))
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: _Stream(0))

    net = random_model("digit_unet", {"n_feat": 8})
    engine = trt_mod.open_trt_engine("digit_unet", net, max_batch=6, opt_batch=4, cache_dir=tmp_path, opset=18)
    assert len(fake.builds) == 1 and fake.builds[0]["flags"] == 1 << 1  # STRONGLY_TYPED on TensorRT 10
    assert engine.max_batch == 6 and engine.backend == "trt" and engine.precision == "fp16"
    assert engine.cache_entry.built and engine.cache_entry.path.name == "model.plan"
    assert (tmp_path / "trt" / "timing-trt10.9.0-fake-gpu-sm-90.cache").read_bytes() == b"TIMING"
    plan = json.loads(engine.cache_entry.path.read_bytes())
    assert plan["profile"]["x"] == [[1, 3, 28, 28], [4, 3, 28, 28], [6, 3, 28, 28]]

    feeds = get_spec("digit_unet").example_inputs(5)
    out = engine.run(feeds)
    ctx = fake.contexts[-1]
    assert out["eps"].shape == (5, 3, 28, 28) and out["eps"].dtype == torch.float32
    assert ctx.shapes["x"] == (5, 3, 28, 28) and ctx.shapes["c"] == (5,)
    assert ctx.addresses["eps"] == out["eps"].data_ptr()
    assert ctx.streams == [7]  # the caller is on the default stream: the engine's own stream is used
    with pytest.raises(Hw2rtError, match="max_batch 6"):
        engine.run(get_spec("digit_unet").example_inputs(7))
    graphed = GraphedEngine(engine)  # buckets up to the profile's max; larger requests are split
    assert graphed.run(get_spec("digit_unet").example_inputs(9))["eps"].shape == (9, 3, 28, 28)

    # Second open: a verified cache hit, no build; the timing cache is fed back into a rebuild.
    again = trt_mod.open_trt_engine("digit_unet", net, max_batch=6, opt_batch=4, cache_dir=tmp_path, opset=18)
    assert not again.cache_entry.built and len(fake.builds) == 1
    engine.cache_entry.path.write_bytes(b"corrupt")
    rebuilt = trt_mod.open_trt_engine("digit_unet", net, max_batch=6, opt_batch=4, cache_dir=tmp_path, opset=18)
    assert rebuilt.cache_entry.built and len(fake.builds) == 2 and fake.builds[1]["timing_in"] == b"TIMING"


def test_trt_profile_uses_dims_for_the_face_unet():
    from hw2rt.engines.trt import profile_shapes

    shapes = profile_shapes(get_spec("face_unet"), 10, dims={"height": 256, "width": 256})
    assert shapes["x"] == ((1, 3, 256, 256), (10, 3, 256, 256), (10, 3, 256, 256))
    assert shapes["t"] == ((1,), (10,), (10,))
    with pytest.raises(Hw2rtError):
        profile_shapes(get_spec("digit_unet"), 4, opt_batch=5)


# --- the GPU check script --------------------------------------------------------------------------

def test_gpu_check_cpu_smoke_writes_valid_json(tmp_path):
    """benchmarks/gpu_check.py --cpu-smoke: the gpu suite's scenarios at tiny sizes, through the one harness."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--out", str(tmp_path),
           "--backends", "torch,bf16+graphs,trt+graphs"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    for key in ("suite", "env", "runners", "per_call", "scenarios", "goals", "sections", "wall_s", "budget_s"):
        assert key in result, key
    assert result["suite"] == "cpu-smoke" and result["budget_s"] == 110
    assert all(s["status"] == "ok" for s in result["sections"].values()), result["sections"]
    assert result["runners"]["trt+graphs"]["available"] is False
    assert "TensorRT" in result["runners"]["trt+graphs"]["reason"]
    loops = {(s["scenario"], s["backend"]): s for s in result["scenarios"]}
    assert loops[("face_ddim_loop", "bf16+graphs")]["parity_value"] >= 0
    digits = loops[("digit_ancestral_loop", "torch")]  # the reference stops after 6 of 12 steps in the smoke run
    assert digits["extrapolated"] and digits["median_s"] > 0 and digits["parity_value"] == 0
    assert loops[("digit_ancestral_loop", "bf16+graphs")]["extrapolated"] is None
    assert (tmp_path / "gpu_check.log").read_text().strip() and (tmp_path / "gpu_check.md").read_text()


# --- GPU only ----------------------------------------------------------------------------------------

@needs_cuda
def test_cuda_graphs_equal_eager_on_gpu():
    net = random_model("digit_unet", {"n_feat": 32})
    graphed = open_engine("digit_unet", net, backend="torch", precision="fp16", device="cuda", max_batch=8)
    eager = graphed.engine
    assert graphed.runner.buckets == (1, 2, 4, 8)
    spec = get_spec("digit_unet")
    for n in (1, 3, 8, 11):
        feeds = {k: v.cuda() for k, v in spec.example_inputs(n, seed=n).items()}
        # Padded and unpadded batches may pick different cuDNN kernels: fp16 rounding, not equality.
        torch.testing.assert_close(graphed.run(feeds)["eps"], eager.run(feeds)["eps"], rtol=5e-3, atol=5e-3)
    assert graphed.runner.graph_error is None and graphed.runner.graph_count >= 3


@needs_trt
def test_trt_engine_matches_torch_on_gpu(tmp_path):
    net = random_model("digit_unet", {"n_feat": 32})
    ref = TorchEngine(net, "digit_unet", device="cuda")
    engine = open_engine("digit_unet", net, backend="trt", precision="fp16", device="cuda", cache_dir=tmp_path,
                         max_batch=8)
    feeds = {k: v.cuda() for k, v in get_spec("digit_unet").example_inputs(5).items()}
    a, b = engine.run(feeds)["eps"], ref.run(feeds)["eps"]
    assert (a - b).abs().max() <= 1e-2 * b.abs().max()
    graphed = GraphedEngine(engine)
    torch.testing.assert_close(graphed.run(feeds)["eps"], a, rtol=5e-3, atol=5e-3)
