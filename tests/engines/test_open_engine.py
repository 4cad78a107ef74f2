"""One engine path: the commands, parity, the demo, bench and the GPU check open the same engine for
the same settings (class, precision, fp32 islands, graphs), because they all call `open_engine`."""
import importlib.util
import inspect
import types

import pytest
import torch

from hw2rt.bench.runners import open_runner
from hw2rt.bench.suites import make_suite
from hw2rt.checkpoints import resolve_checkpoint
from hw2rt.cli.jobs import _open_engine
from hw2rt.engines import GraphedEngine, open_engine, resolve_source
from hw2rt.engines.openvino import has_bf16
from hw2rt.engines.torch import fp32_islands
from hw2rt.errors import Hw2rtError
from hw2rt.verify import parity

CUDA = torch.cuda.is_available()
DIMS = {"face_unet": {"height": 32, "width": 32}, "digit_unet": {}}


# (backend, precision) -> the runner of bench's suites (the GPU check is the gpu suite) that opens the
# same engine as the commands with --device cpu, and on a GPU (where every command runs behind CUDA graphs).
CPU_RUNNERS = {("torch", "fp32"): "torch", ("torch", "bf16"): "bf16", ("ort", "fp32"): "ort",
               ("ort", "fp16"): "ort-fp16", ("openvino", "fp32"): "openvino",
               ("openvino", "bf16"): "openvino-bf16"}
CUDA_RUNNERS = {("torch", "fp16"): "fp16+graphs", ("torch", "bf16"): "bf16+graphs",
                ("trt", "fp16"): "trt+graphs"}


def _same(engines: dict):
    described = {who: e.describe() for who, e in engines.items()}
    first = next(iter(described.values()))
    for who, d in described.items():
        assert d == first, f"{who} opens {d}, the commands open {first}"
    for e in engines.values():
        e.close()
    return first


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("model", ["face_unet", "digit_unet"])
@pytest.mark.parametrize("device, backend, precision",
                         [("cpu", *k) for k in CPU_RUNNERS] + [("cuda", *k) for k in CUDA_RUNNERS])
def test_commands_parity_bench_and_gpu_check_open_the_same_engine(model, device, backend, precision):
    runner = (CPU_RUNNERS if device == "cpu" else CUDA_RUNNERS)[(backend, precision)]
    if (backend, precision) == ("openvino", "bf16") and not has_bf16():
        pytest.skip("bf16 on openvino needs a CPU with bf16 hardware (AVX512-BF16 or AMX)")
    suite = make_suite("cpu" if device == "cpu" else "gpu")
    assert runner in suite.backends or runner in make_suite("quick").backends
    if device == "cuda" and not (CUDA and (backend != "trt" or _has_tensorrt())):
        pytest.skip(f"{backend} {precision} on CUDA needs {'TensorRT and ' if backend == 'trt' else ''}"
                    f"a GPU; there the commands, parity and the gpu suite's runner {runner!r} "
                    f"(the GPU check) all open a GraphedEngine (per-bucket CUDA graphs) over the {backend} "
                    f"engine with the fp32 islands "
                    f"{'of engines/torch.py' if backend == 'torch' else 'of the fp16 graph'}")
    path = resolve_checkpoint(None, model)
    net = resolve_source(model, path).net
    engines = {
        "cli": _open_engine(model, None, backend, precision, None, device, **DIMS[model]),
        "parity": parity.open_pair(model, path, backend=backend, precision=precision, device=device,
                                   dims=DIMS[model])[1],
        "bench and the GPU check": open_runner(runner, model, net, device=device, dims=DIMS[model]),
        "demo": open_engine(model, path, backend=backend, precision=precision, device=device,
                            dims=DIMS[model]),
    }
    d = _same(engines)
    assert d["backend"] == backend and d["precision"] == precision and d["graphs"] is (device == "cuda")
    assert d["engine"] == {"torch": "TorchEngine", "ort": "OrtEngine", "trt": "TrtEngine",
                           "openvino": "OpenVinoEngine"}[backend]
    if backend in ("torch", "openvino"):  # both follow the one island list
        assert d["islands"] == list(fp32_islands(model, precision))
        assert ("time" in d["islands"]) is (model == "face_unet" and precision == "fp16")


def test_parity_reference_is_torch_fp32_on_the_cpu():
    ref, cand, source, _ = parity.open_pair("dann", None, backend="auto")
    assert ref.describe()["engine"] == "TorchEngine" and ref.precision == "fp32" and str(ref.device) == "cpu"
    assert cand.backend == "ort" and source["checkpoint"] is None  # auto on this CPU: ort
    ref.close()
    cand.close()


def test_graphs_auto_means_cuda_graphs_on_cuda_only():
    net = parity.random_model("dann")
    assert open_engine("dann", net, backend="torch").describe()["graphs"] is False
    wrapped = open_engine("dann", net, backend="torch", graphs=True)  # the same buckets, eagerly on the CPU
    assert wrapped.describe()["buckets"][-1] == 1024 and wrapped.describe()["graphs"] is True
    assert wrapped.engine.max_batch == 1024  # ModelSpec.max_batch: the top bucket
    with pytest.raises(Hw2rtError, match="graphs must be"):
        open_engine("dann", net, graphs="yes")
    with pytest.raises(Hw2rtError, match="unknown device"):
        open_engine("dann", net, device="banana")
    with pytest.raises(Hw2rtError, match="torch.compile applies to the torch backend"):
        open_engine("dann", net, backend="ort", compile=True)


# --- what a CUDA device gets (the device, TensorRT and onnxruntime-gpu faked: torch runs on the CPU) ------

@pytest.fixture
def on_cuda(monkeypatch):
    """open_engine as on a GPU machine; the opened backends are recorded and stand in on the CPU."""
    from hw2rt.engines import auto as auto_mod
    from hw2rt.engines import open as open_mod
    from hw2rt.engines.torch import TorchEngine

    opened = []

    def torch_engine(net, model, **kwargs):
        opened.append({"backend": "torch", "model": model, **kwargs})
        return TorchEngine(net, model, max_batch=kwargs["max_batch"])

    class Ort:
        def __init__(self, path, **kwargs):
            opened.append({"backend": "ort", **kwargs})
            self.inner = TorchEngine(parity.random_model("dann"), "dann", max_batch=kwargs["max_batch"])

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(open_mod, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(auto_mod, "_trt_available", lambda: False)
    monkeypatch.setattr(auto_mod, "available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(open_mod, "TorchEngine", torch_engine)
    monkeypatch.setattr(open_mod, "OrtEngine", Ort)
    monkeypatch.setattr(open_mod, "cached_onnx", lambda *a, **k: types.SimpleNamespace(path="model.onnx"))
    return open_mod, opened


def test_auto_on_a_gpu_without_tensorrt_is_torch_fp16_behind_cuda_graphs(on_cuda):
    """No TensorRT, no onnxruntime-gpu: `auto` opens torch fp16 (fp32 islands) behind CUDA graphs, not the
    fp32 reference; an explicit precision is kept."""
    open_mod, opened = on_cuda
    net = parity.random_model("face_unet", {"base": 32, "norm_groups": 8})
    engine = open_engine("face_unet", net, device="cuda")
    assert opened[-1]["backend"] == "torch" and opened[-1]["precision"] == "fp16"
    assert opened[-1]["device"] == torch.device("cuda") and opened[-1]["max_batch"] == 16
    assert isinstance(engine, GraphedEngine) and engine.runner.graphs is True
    open_engine("face_unet", net, device="cuda", precision="fp32")
    assert opened[-1]["precision"] == "fp32"
    open_engine("face_unet", net, backend="torch", device="cuda")  # torch named: the fp32 reference
    assert opened[-1]["precision"] == "fp32"
    assert engine.auto_choice.line() == "auto: torch fp16 (CUDA, no TensorRT: torch behind CUDA graphs)"
    assert open_mod.default_precision("trt", None) == "fp16"
    assert open_mod.default_precision("ort", None) == "fp32"
    assert open_mod.default_precision("ort", "x.onnx") is None


def test_ort_on_cuda_is_never_captured_into_cuda_graphs(on_cuda, monkeypatch):
    """ORT's CUDA EP runs on the stream its session was made with: torch cannot capture it. `auto` leaves it
    unwrapped; graphs=True gives the buckets, run eagerly."""
    from hw2rt.engines import auto as auto_mod

    _, opened = on_cuda
    monkeypatch.setattr(auto_mod, "available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    net = parity.random_model("dann")
    engine = open_engine("dann", net, device="cuda")
    assert opened[-1]["backend"] == "ort" and opened[-1]["max_batch"] is None
    assert not isinstance(engine, GraphedEngine)
    bucketed = open_engine("dann", net, backend="ort", device="cuda", graphs=True)
    assert isinstance(bucketed, GraphedEngine) and bucketed.runner.graphs is False
    assert "buckets" in bucketed.name and "CUDA graphs" not in bucketed.name


@pytest.mark.parametrize("model, buckets", [("face_unet", (1, 2, 4, 8, 10, 11, 16)),
                                             ("digit_unet", (1, 2, 4, 8, 16, 32, 64, 128, 256, 500, 512,
                                                             1024, 2000))])
def test_graph_buckets_hold_the_jobs_own_calls(on_cuda, model, buckets):
    """The face job's 10 rows and the interpolation's 11 run unpadded (not in 16), the digit job's doubled
    chunks of 250 (CPU) and 1,000 (CUDA) images in buckets of 500 and 2,000."""
    from hw2rt.models import get_spec
    from hw2rt.runtime import jobs

    spec = get_spec(model)
    config = {"base": 32, "norm_groups": 8} if model == "face_unet" else {"n_feat": 8}
    net = parity.random_model(model, config)
    engine = open_engine(model, net, device="cuda")
    assert engine.runner.buckets == buckets and engine.runner.max_batch == spec.max_batch
    if model == "face_unet":  # the jobs' own defaults are those calls
        defaults = {name: inspect.signature(fn).parameters["batch_size"].default
                    for name, fn in (("faces", jobs.sample_faces), ("interp", jobs.interp_job))}
        assert set(defaults.values()) == set(spec.call_batches)
    else:
        assert {2 * spec.job_batch_size(d) for d in ("cpu", "cuda")} == set(spec.call_batches)
        assert spec.max_batch == 2 * spec.job_batch_size("cuda")  # the GPU's chunk is one call
    assert open_engine(model, net, device="cuda", max_batch=8).runner.buckets == (1, 2, 4, 8)
