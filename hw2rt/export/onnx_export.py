"""ONNX export of a registered network from its I/O spec, checked, with hw2rt metadata.

Exporter: torch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`). For
these four convolutional networks it gives a compact graph in about a second (the dynamo
exporter needs onnxscript and is several times slower to run), folds constants, keeps
every dynamic axis symbolic (batch, and height/width for the face UNet: one file serves
every size divisible by 32), and ONNX Runtime turned it into a graph 1.5-1.65x faster
than torch eager on this CPU. BatchNorm is folded into its Conv/Linear before export.
"""
import copy
import hashlib
import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from hw2rt.errors import Hw2rtError, first_line
from hw2rt.export.fp16 import fold_batchnorm, to_fp16
from hw2rt.io import atomic_path
from hw2rt.models import ModelSpec, get_spec

DEFAULT_OPSET = 18
MIN_OPSET = 18
PRECISIONS = ("fp32", "fp16")  # what a trace exports; int8 graphs are quantized from fp32 ones (int8.py)
EXPORTER = "torch.onnx-torchscript"


def max_opset() -> int:
    """The newest opset torch's TorchScript exporter writes (20 with torch 2.13)."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))
META_PREFIX = "hw2rt."
# The traced example's sizes. Every named axis stays dynamic, so the smallest valid size is
# enough, and tracing runs the network once for real: an fp16 trace of the full face UNet
# goes through torch's slow CPU fp16 convolutions (~20 s at 32x32, minutes at 256x256).
TRACE_DIMS = {"face_unet": {"height": 32, "width": 32}}

_ONNX_DTYPES = {torch.float32: onnx.TensorProto.FLOAT, torch.float16: onnx.TensorProto.FLOAT16,
                torch.int64: onnx.TensorProto.INT64, torch.int32: onnx.TensorProto.INT32}


def hw2rt_version() -> str:
    try:
        from importlib.metadata import version
        return version("hw2rt")
    except Exception:  # noqa: BLE001 -- a source tree that was never installed
        return "0+unknown"


def exporter_versions() -> dict:
    """Everything the bytes of an export depend on besides the weights and the arguments."""
    return {"exporter": EXPORTER, "torch": torch.__version__, "onnx": onnx.__version__,
            "hw2rt": hw2rt_version()}


def state_dict_sha256(net: nn.Module) -> str:
    """A content hash of a module's state dict (names, dtypes, shapes, bytes), order-independent."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def trace_dims(spec: ModelSpec, dims: dict | None = None) -> dict:
    """The non-batch sizes an export traces with: `dims` over TRACE_DIMS over the spec's defaults."""
    return {**spec.default_dims, **TRACE_DIMS.get(spec.name, {}), **(dims or {})}


def dynamic_axes(spec: ModelSpec) -> dict:
    return {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)}
            for s in (*spec.inputs, *spec.outputs)}


def prepare_module(net: nn.Module, precision: str, islands=None) -> nn.Module:
    """The module that gets traced: a copy, eval mode, BatchNorm folded; fp16 with fp32 `islands`
    (None: the default ones; see export/fp16.py)."""
    if precision not in PRECISIONS:
        raise Hw2rtError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16":
        return to_fp16(net, islands)
    if islands is not None:
        raise Hw2rtError(f"fp32 islands are a property of fp16 graphs, not of {precision}")
    return fold_batchnorm(copy.deepcopy(net).eval())


def export_onnx(net: nn.Module, spec: ModelSpec | str, out_path, *, precision: str = "fp32",
                opset: int = DEFAULT_OPSET, dims: dict | None = None, source_sha256: str | None = None,
                metadata: dict | None = None, islands=None) -> Path:
    """Export `net` (a module of `spec`'s model) to `out_path`, atomically; returns the path.

    - Inputs/outputs are named and typed exactly as `spec.inputs/outputs` (fp16 graphs too:
      fp32 in, fp32 out, fp16 inside); every named axis ("batch", "height", "width") is dynamic.
    - fp16: `islands` are the fp32 islands (None: the default set; export/fp16.py).
    - `dims` sets the traced example's non-batch sizes (default: `trace_dims`, 32x32 for the
      face UNet); the trace uses batch 2 so that no reshape bakes in a batch of 1.
    - The graph passes `onnx.checker.check_model` and strict shape inference.
    - metadata_props: hw2rt.model, hw2rt.config (JSON), hw2rt.source_sha256 (the checkpoint
      file's SHA-256, or `state_dict_sha256(net)`), hw2rt.precision, hw2rt.opset,
      hw2rt.version, hw2rt.exporter, hw2rt.torch, hw2rt.dims, fp16: hw2rt.islands (JSON: the islands
      the trace used), and `metadata` (keys get the hw2rt. prefix).
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if not MIN_OPSET <= opset <= max_opset():
        raise Hw2rtError(f"opset {opset}: hw2rt exports opsets {MIN_OPSET} to {max_opset()} (the newest this "
                         f"torch's exporter writes)")
    out_path = Path(out_path)
    dims = trace_dims(spec, dims)
    module = prepare_module(net, precision, islands)
    example = spec.example_inputs(2, seed=0, **dims)
    names_in = [s.name for s in spec.inputs]
    names_out = [s.name for s in spec.outputs]
    meta = {
        "model": spec.name,
        "config": json.dumps(getattr(net, "config", {}), sort_keys=True),
        "source_sha256": source_sha256 or state_dict_sha256(net),
        "precision": precision,
        "opset": str(opset),
        "version": hw2rt_version(),
        "exporter": EXPORTER,
        "torch": torch.__version__,
        "dims": json.dumps(dims, sort_keys=True),
        **{k.removeprefix(META_PREFIX): str(v) for k, v in (metadata or {}).items()},
    }
    with atomic_path(out_path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter warns that it is deprecated and about traced Python ints
            # (math.sqrt(c) on a channel count, constant by construction).
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(example[n] for n in names_in), str(tmp), dynamo=False,
                              opset_version=opset, input_names=names_in, output_names=names_out,
                              dynamic_axes=dynamic_axes(spec), do_constant_folding=True)
        if precision == "fp16":
            meta["islands"] = json.dumps(module.islands())
        model = onnx.load(str(tmp))
        write_metadata(model, meta)
        model.producer_name, model.producer_version = "hw2rt", hw2rt_version()
        check_graph(model, spec, where=str(out_path))
        onnx.save(model, str(tmp))
    return out_path


def check_graph(model: onnx.ModelProto, spec: ModelSpec, where: str = "model"):
    """Checker + strict shape inference + I/O names, dtypes and ranks as the spec says."""
    try:
        onnx.checker.check_model(model)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # noqa: BLE001 -- onnx raises ValidationError / InferenceError / RuntimeError
        raise Hw2rtError(f"{where}: exported graph failed the ONNX checks: {first_line(exc, 200)}") from None
    for kind, got, want in (("input", model.graph.input, spec.inputs),
                            ("output", model.graph.output, spec.outputs)):
        got_sig = [(v.name, v.type.tensor_type.elem_type, len(v.type.tensor_type.shape.dim)) for v in got]
        want_sig = [(s.name, _ONNX_DTYPES[s.dtype], len(s.shape)) for s in want]
        if got_sig != want_sig:
            raise Hw2rtError(f"{where}: graph {kind}s {got_sig} differ from the {spec.name} spec {want_sig}")
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < MIN_OPSET:
        raise Hw2rtError(f"{where}: opset below {MIN_OPSET}")


def write_metadata(model: onnx.ModelProto, meta: dict) -> None:
    """Replace `model`'s metadata by hw2rt's `meta` (keys without the prefix, string values)."""
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=META_PREFIX + k, value=v)


def read_metadata(model_or_path) -> dict:
    """hw2rt's metadata of an ONNX model (a ModelProto, or a path: read without external data),
    keys without the prefix; {} when the model is not one of hw2rt's exports."""
    model = model_or_path
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model_or_path), load_external_data=False)
    return {p.key.removeprefix(META_PREFIX): p.value for p in model.metadata_props
            if p.key.startswith(META_PREFIX)}
