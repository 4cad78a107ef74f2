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
from hw2rt.parity import random_model

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
    engine = trt_mod.open_trt_engine("digit_unet", net, max_batch=6, opt_batch=4, cache_dir=tmp_path,
                                     opset=18)
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
    rebuilt = trt_mod.open_trt_engine("digit_unet", net, max_batch=6, opt_batch=4, cache_dir=tmp_path,
                                      opset=18)
    assert rebuilt.cache_entry.built and len(fake.builds) == 2 and fake.builds[1]["timing_in"] == b"TIMING"


def test_trt_profile_uses_dims_for_the_face_unet():
    from hw2rt.engines.trt import profile_shapes

    shapes = profile_shapes(get_spec("face_unet"), 10, dims={"height": 256, "width": 256})
    assert shapes["x"] == ((1, 3, 256, 256), (10, 3, 256, 256), (10, 3, 256, 256))
    assert shapes["t"] == ((1,), (10,), (10,))
    with pytest.raises(Hw2rtError):
        profile_shapes(get_spec("digit_unet"), 4, opt_batch=5)


