"""Engines: one small interface (base.Engine) over torch, ONNX Runtime and (next) TensorRT.

`open_engine` is the one way in: it resolves the weights (a checkpoint file, a module, an
hw2rt ONNX file, or the bundled default), picks the backend, exports through the cache when
the backend needs a graph, and returns an Engine.

Backends:
    torch  eager PyTorch (optionally torch.compile); fp32 and bf16 anywhere, fp16 on CUDA only
    ort    ONNX Runtime: CPU EP; CUDA (+ TensorRT) EPs with I/O binding under onnxruntime-gpu
    trt    native TensorRT (engines/trt.py, issue #5): plans built from the exported graph, cached
    auto   the fastest available: trt on CUDA when present, then ort (CPU, or CUDA EP), then torch
"""
import importlib.util
from pathlib import Path

from torch import nn

from hw2rt.engines.base import Engine, check_feeds, output_shapes
from hw2rt.engines.cache import CacheEntry, cache_root, get_or_build, onnx_key_parts
from hw2rt.engines.ort import OrtEngine, available_providers
from hw2rt.engines.torch import TORCH_PRECISIONS, TorchEngine
from hw2rt.errors import Hw2rtError
from hw2rt.export import DEFAULT_OPSET, PRECISIONS, export_onnx, state_dict_sha256, trace_dims
from hw2rt.models import get_spec

BACKENDS = ("auto", "torch", "ort", "trt")
# Every precision some backend serves: the exported graphs' (PRECISIONS) plus torch-only bf16.
ENGINE_PRECISIONS = (*PRECISIONS, *(p for p in TORCH_PRECISIONS if p not in PRECISIONS))

__all__ = ["BACKENDS", "ENGINE_PRECISIONS", "CacheEntry", "Engine", "OrtEngine", "TorchEngine", "cached_onnx",
           "check_feeds", "open_engine", "output_shapes", "pick_backend", "resolve_source"]


def _trt_available() -> bool:
    # Becomes true once engines/trt.py exists (issue #5) and tensorrt is importable.
    return importlib.util.find_spec("hw2rt.engines.trt") is not None and importlib.util.find_spec("tensorrt") is not None


def pick_backend(device: str = "cpu") -> str:
    """`auto`: the fastest backend this install can serve on `device`."""
    if str(device).startswith("cuda"):
        if _trt_available():
            return "trt"
        return "ort" if "CUDAExecutionProvider" in available_providers() else "torch"
    return "ort"


def resolve_source(model: str, source=None) -> tuple[nn.Module, str, str]:
    """(module in eval mode, source SHA-256, label for messages) from a checkpoint path, a module,
    or None (the bundled checkpoint). The SHA-256 is the checkpoint file's, or the module's
    state-dict hash."""
    from hw2rt.checkpoints import file_sha256, load_model, resolve_checkpoint

    if isinstance(source, nn.Module):
        return source.eval(), state_dict_sha256(source), f"<{type(source).__name__} module>"
    path = resolve_checkpoint(source, model)
    if path.suffix == ".onnx":
        raise Hw2rtError(f"{path}: an ONNX graph holds no torch module; give the checkpoint it was exported from")
    net, _, _ = load_model(path, model)
    return net, file_sha256(path), str(path)


def cached_onnx(model: str, net: nn.Module, source_sha256: str, *, precision: str = "fp32",
                opset: int = DEFAULT_OPSET, dims: dict | None = None, cache_dir=None) -> CacheEntry:
    """The exported graph of `net` from the cache, exporting it on a miss or a bad entry.
    `dims`: the trace size (default `trace_dims`; the graph is dynamic in every named axis)."""
    spec = get_spec(model)
    dims = trace_dims(spec, dims)
    parts = onnx_key_parts(model, getattr(net, "config", {}), source_sha256, precision, opset, dims)

    def build(tmp: Path):
        export_onnx(net, spec, tmp, precision=precision, opset=opset, dims=dims, source_sha256=source_sha256)

    return get_or_build("onnx", f"{model}-{precision}", parts, "model.onnx", build, cache_dir=cache_dir)


def open_engine(model: str, source=None, *, backend: str = "auto", precision: str | None = None,
                device: str = "cpu", threads: int | None = None, cache_dir=None, dims: dict | None = None,
                opset: int = DEFAULT_OPSET, compile: bool | dict = False, max_batch: int | None = None) -> Engine:
    """An Engine for `model` ("face_unet", "digit_unet", "dann", "digit_classifier").

    source: a checkpoint path (.pt/.pth/.safetensors), an nn.Module of that model, an hw2rt
        ONNX file (.onnx: ort only; its precision is the file's), or None for the bundled one.
    precision: "fp32" (default), "fp16" (fp16 graph with fp32 islands; torch: CUDA only) or
        "bf16" (torch only: autocast bf16, channels-last; fast only with native bf16 hardware).
    threads: intra-op threads (ORT session option; torch: process-wide torch.set_num_threads).
    cache_dir: where exported graphs are cached (default $HW2RT_CACHE or ~/.cache/hw2rt).
    dims: sizes of the non-batch axes the engine will mostly serve (face_unet height/width):
        TensorRT's optimisation profile. ORT and torch are dynamic in them and ignore it (the
        graph is traced at the small `trace_dims` whatever the serving size).
    """
    spec = get_spec(model)
    if backend not in BACKENDS:
        raise Hw2rtError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if precision is not None and precision not in ENGINE_PRECISIONS:
        raise Hw2rtError(f"unknown precision {precision!r}; choose one of {', '.join(ENGINE_PRECISIONS)}")
    if backend == "auto":
        backend = "torch" if precision == "bf16" else pick_backend(device)
    if precision is not None and precision not in PRECISIONS and backend != "torch":
        raise Hw2rtError(f"precision {precision} runs on the torch backend only (there is no {precision} ONNX "
                         f"graph for {backend}); use --backend torch, or fp32/fp16 on {backend}")
    if backend == "trt":  # engines/trt.py: plan of the fp16 (default) or fp32 graph, via the engine cache
        from hw2rt.engines.trt import open_trt_engine
        return open_trt_engine(spec.name, source, precision=precision, device=device, dims=dims,
                               max_batch=max_batch, cache_dir=cache_dir, opset=opset)

    if isinstance(source, (str, Path)) and Path(source).suffix == ".onnx":
        if backend != "ort":
            raise Hw2rtError(f"{source}: an ONNX file runs on the ort backend, not {backend}")
        engine = OrtEngine(source, model=spec.name, device=device, threads=threads, max_batch=max_batch,
                           trt_cache_dir=cache_root(cache_dir) / "ort_trt")
        if precision is not None and precision != engine.precision:
            engine.close()
            raise Hw2rtError(f"{source}: is an {engine.precision} graph, but {precision} was asked for")
        return engine

    precision = precision or "fp32"
    net, sha, label = resolve_source(spec.name, source)
    if backend == "torch":
        return TorchEngine(net, spec.name, precision=precision, device=device, compile=compile, threads=threads,
                           max_batch=max_batch, source=label)
    entry = cached_onnx(spec.name, net, sha, precision=precision, opset=opset, cache_dir=cache_dir)
    engine = OrtEngine(entry.path, model=spec.name, device=device, threads=threads, max_batch=max_batch,
                       trt_cache_dir=cache_root(cache_dir) / "ort_trt")
    engine.cache_entry = entry
    return engine

