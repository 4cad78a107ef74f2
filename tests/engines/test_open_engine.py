"""One engine path: the commands, parity, the demo, bench and the GPU check open the same engine for
the same settings (class, precision, fp32 islands, graphs), because they all call `open_engine`."""
import importlib.util

import pytest
import torch

from hw2rt import parity
from hw2rt.bench.runners import open_runner
from hw2rt.bench.suites import make_suite
from hw2rt.checkpoints import resolve_checkpoint
from hw2rt.cli.jobs import _open_engine
from hw2rt.engines import open_engine, pick_backend, resolve_source
from hw2rt.errors import Hw2rtError

CUDA = torch.cuda.is_available()
DIMS = {"face_unet": {"height": 32, "width": 32}, "digit_unet": {}}


# (backend, precision) -> the runner of bench's suites (the GPU check is the gpu suite) that opens the
# same engine as the commands with --device cpu, and on a GPU (where every command runs behind CUDA graphs).
CPU_RUNNERS = {("torch", "fp32"): "torch", ("torch", "bf16"): "bf16", ("ort", "fp32"): "ort",
               ("ort", "fp16"): "ort-fp16"}
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
    assert d["engine"] == {"torch": "TorchEngine", "ort": "OrtEngine", "trt": "TrtEngine"}[backend]
    if backend == "torch":
        assert d["islands"] == (["time"] if model == "face_unet" and precision != "fp32" else [])


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


def test_auto_is_ort_here_and_torch_for_bf16():
    assert pick_backend("cpu") == "ort" and pick_backend("cpu", "bf16") == "torch"
