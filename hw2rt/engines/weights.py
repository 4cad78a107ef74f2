"""Where an engine's weights come from (a checkpoint file, a module, or the bundled default), and
their exported graph in the artefact cache. Used by `open_engine` and by the TensorRT backend."""
import functools
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from hw2rt.engines.cache import CacheEntry, get_or_build, onnx_key_parts
from hw2rt.errors import Hw2rtError
from hw2rt.export import DEFAULT_OPSET, export_onnx, state_dict_sha256, trace_dims
from hw2rt.models import get_spec


@dataclass(frozen=True)
class Weights:
    net: nn.Module  # eval mode
    label: str  # for messages: the file, or "<FaceUNet module>"
    path: Path | None  # the checkpoint file, None for a module

    @functools.cached_property
    def sha256(self) -> str:
        """The checkpoint file's SHA-256, or the module's state-dict hash. Computed on first use
        only (seconds for the face UNet): the torch backend never needs it."""
        from hw2rt.checkpoints import file_sha256

        return file_sha256(self.path) if self.path is not None else state_dict_sha256(self.net)


def resolve_source(model: str, source=None) -> Weights:
    """The weights of `source`: a checkpoint path (or a bundled name), an nn.Module, or None (the
    bundled checkpoint)."""
    from hw2rt.checkpoints import load_model, resolve_checkpoint

    if isinstance(source, nn.Module):
        return Weights(source.eval(), f"<{type(source).__name__} module>", None)
    path = resolve_checkpoint(source, model)
    if path.suffix == ".onnx":
        raise Hw2rtError(f"{path}: an ONNX graph holds no torch module; "
                         "give the checkpoint it was exported from")
    net, _, _ = load_model(path, model)
    return Weights(net, str(path), path)


def cached_onnx(model: str, weights: Weights, *, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                dims: dict | None = None, cache_dir=None, calibration_images=None,
                int8_target: str = "ort") -> CacheEntry:
    """The exported graph of `weights` from the cache, exporting it on a miss or a bad entry.
    `dims`: the trace size (default `trace_dims`; the graph is dynamic in every named axis).
    int8: the fp32 graph quantized (export/int8.py) on feeds recorded from the model's own loop
    (runtime/calibration.py; dann and digit_classifier: `calibration_images`, a folder), for
    `int8_target` "ort" or "trt" (export/int8.py: the activations' type). fp8: the trt int8 graph
    rewritten (export/fp8.py), the same calibration."""
    spec = get_spec(model)
    dims = trace_dims(spec, dims)
    net = weights.net
    if precision == "int8":
        return _cached_int8(model, weights, opset, dims, cache_dir, calibration_images, int8_target)
    if precision == "fp8":
        return _cached_fp8(model, weights, opset, dims, cache_dir, calibration_images)
    parts = onnx_key_parts(model, getattr(net, "config", {}), weights.sha256, precision, opset, dims)

    def build(tmp: Path):
        export_onnx(net, spec, tmp, precision=precision, opset=opset, dims=dims, source_sha256=weights.sha256)

    return get_or_build("onnx", f"{model}-{precision}", parts, "model.onnx", build, cache_dir=cache_dir)


def _int8_key_parts(model, weights, opset, dims, calibration_images, target) -> dict:
    from hw2rt.export.int8 import DEFAULT_METHOD, KEEP_FP32, weight_range
    from hw2rt.runtime.calibration import calibration_recipe

    recipe = calibration_recipe(model, calibration_images)
    return {**onnx_key_parts(model, getattr(weights.net, "config", {}), weights.sha256, "int8", opset, dims),
            "int8": {"method": DEFAULT_METHOD, "keep_fp32": list(KEEP_FP32[model]), "calibration": recipe,
                     "target": target, "weight_range": weight_range(target)}}


def _cached_int8(model, weights, opset, dims, cache_dir, calibration_images, target) -> CacheEntry:
    from hw2rt.export.int8 import export_int8

    parts = _int8_key_parts(model, weights, opset, dims, calibration_images, target)
    fp32 = cached_onnx(model, weights, precision="fp32", opset=opset, dims=dims, cache_dir=cache_dir)

    def build(tmp: Path):
        export_int8(weights.net, model, tmp, calibration_images=calibration_images, fp32_path=fp32.path,
                    target=target)

    return get_or_build("onnx", f"{model}-int8-{target}", parts, "model.onnx", build, cache_dir=cache_dir)


def _cached_fp8(model, weights, opset, dims, cache_dir, calibration_images) -> CacheEntry:
    from hw2rt.export.fp8 import FP8_OPSET, export_fp8

    parts = {**_int8_key_parts(model, weights, opset, dims, calibration_images, "trt"),
             "precision": "fp8", "fp8": {"format": "float8e4m3fn", "opset": FP8_OPSET}}
    fp32 = cached_onnx(model, weights, precision="fp32", opset=opset, dims=dims, cache_dir=cache_dir)
    int8 = cached_onnx(model, weights, precision="int8", opset=opset, dims=dims, cache_dir=cache_dir,
                       calibration_images=calibration_images, int8_target="trt")

    def build(tmp: Path):
        export_fp8(weights.net, model, tmp, fp32_path=fp32.path, int8_path=int8.path)

    return get_or_build("onnx", f"{model}-fp8", parts, "model.onnx", build, cache_dir=cache_dir)
