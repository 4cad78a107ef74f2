"""int8 graphs: ONNX Runtime's static QDQ quantization of the fp32 export, calibrated on the
model's own use (runtime/calibration.py records the feeds through the engine interface).

- Weights int8 per output channel (symmetric), in the QDQ format: every quantized tensor is
  QuantizeLinear -> DequantizeLinear in front of an ordinary op. Activations depend on the target:
  "ort" uint8 with a zero point (ONNX Runtime's CPU provider fuses the pairs into u8 x s8 integer
  kernels, VNNI where the CPU has it), "trt" int8 symmetric (zero point 0: the only quantization
  TensorRT's explicitly quantized, strongly typed plans accept). One calibration serves both.
- The weights' range (`weight_range`) depends on the target, and for "ort" on the CPU. Without VNNI
  (x86 CPUs with AVX2 but no VNNI, such as Zen 3, and AVX-512 before VNNI) ONNX Runtime's u8 x s8
  kernels add each two adjacent products with vpmaddubsw into a saturating int16: a pair a0*w0 + a1*w1
  over 32767 is clipped there, and not on a VNNI CPU (vpdpbusd sums in int32). So "ort" weights use
  [-64, 64] on such a CPU (ORT's reduce_range; PyTorch's x86 quantization makes the same choice):
  255 * (64 + 64) = 32640 cannot saturate, and the integer sums are exactly a VNNI CPU's. Elsewhere
  (VNNI; ARM's dot products) and for "trt" (int32 accumulation) the weights keep [-127, 127]. The
  range is in the metadata and the cache key; `benchmarks/int8_avx2_saturation.py` emulates the AVX2
  arithmetic of both ranges (RESULTS.md, "int8 on CPUs without VNNI").
- Calibration (the activation ranges): "minmax" (the observed extremes), "entropy" (KL divergence of
  the histogram, TensorRT's classic choice) or "percentile" (the default: the 99.99th percentile of
  |x|; outliers of a diffusion model's early, noisy steps otherwise stretch every range).
- Sensitive nodes stay fp32 (KEEP_FP32, by module scope: a node whose name starts with one of the
  prefixes, or whose op is one of the op types): each network's first and last layer and its time
  and label embeddings (tiny compute, and every error there reaches every channel), and softmax.
  `keep_fp32` overrides them.

The choice (method, nodes kept fp32, what the calibration data was) goes into the graph's metadata
(hw2rt.int8) and, through the engine cache, into the cache key.
"""
import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from hw2rt.errors import Hw2rtError
from hw2rt.export.onnx_export import check_graph, read_metadata, write_metadata
from hw2rt.io import atomic_path
from hw2rt.models import get_spec

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_METHOD = "percentile"
PERCENTILE = 99.99
# Module scopes (ONNX node-name prefixes of the TorchScript export) and op types kept fp32 per model.
KEEP_FP32 = {
    "digit_unet": ("/init_conv/conv1/", "/out/out.3/", "/timeembed1/", "/timeembed2/", "/contextembed1/",
                   "/contextembed2/"),
    "face_unet": ("/down1/", "/out/out.2/", "/time/", "Softmax"),
    "dann": ("/feature/conv/conv.0/", "/label_classifier/layers/layers.7/", "LogSoftmax"),
    "digit_classifier": ("/conv1/", "/fc3/"),
}


def kept_nodes(model: onnx.ModelProto, keep: tuple) -> list:
    """The names of the nodes `keep` selects: a "/scope/" prefix of the node name, or an op type."""
    scopes = tuple(k for k in keep if k.startswith("/"))
    ops = {k for k in keep if not k.startswith("/")}
    return [n.name for n in model.graph.node if n.op_type in ops or (scopes and n.name.startswith(scopes))]


class _Feeds:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, feeds: list):
        self._it = iter(feeds)

    def get_next(self):
        feed = next(self._it, None)
        return None if feed is None else {k: _numpy(v) for k, v in feed.items()}


@contextlib.contextmanager
def _quiet():
    """The quantizer prints its progress and logs advice on the root logger: keep both off the console."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _numpy(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


TARGETS = ("ort", "trt")
FULL_RANGE, REDUCED_RANGE = 127, 64  # the int8 weights' largest magnitude (see above)


def cpu_saturates_int8() -> bool:
    """Whether ONNX Runtime's u8 x s8 kernels saturate int16 pair sums on this CPU: x86 without VNNI."""
    import platform

    import torch

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    caps = torch.cpu.get_capabilities()
    return not (caps.get("avx512_vnni") or caps.get("avx_vnni"))


def weight_range(target: str) -> int:
    """The int8 weights' range for `target` on this machine (see above)."""
    return REDUCED_RANGE if target == "ort" and cpu_saturates_int8() else FULL_RANGE


def quantize_int8(fp32_path, out_path, feeds: list, *, method: str = DEFAULT_METHOD, keep_fp32=None,
                  calibration: dict | None = None, target: str = "ort",
                  weights: int | None = None) -> Path:
    """The QDQ int8 graph of the hw2rt fp32 export `fp32_path`, calibrated on `feeds` (a list of
    {input name: tensor} as the engine is called), written atomically to `out_path`.
    keep_fp32: scopes/op types kept fp32 (default KEEP_FP32 of the graph's model). `calibration`:
    what the feeds were (recorded in the metadata). `target`: "ort" or "trt" (the activations' type).
    `weights`: 64 or 127, the weights' largest magnitude (default `weight_range(target)`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise Hw2rtError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise Hw2rtError(f"int8 target {target!r}: choose one of {', '.join(TARGETS)}")
    if not feeds:
        raise Hw2rtError("int8 calibration needs at least one recorded batch")
    top = weight_range(target) if weights is None else weights
    if top not in (REDUCED_RANGE, FULL_RANGE):
        raise Hw2rtError(f"int8 weight range {top}: {REDUCED_RANGE} (ORT's reduce_range) or {FULL_RANGE}")
    fp32 = onnx.load(str(fp32_path))
    meta = read_metadata(fp32)
    if meta.get("precision") != "fp32":
        raise Hw2rtError(f"{fp32_path}: int8 quantizes an hw2rt fp32 export (not {meta.get('precision')!r})")
    spec = get_spec(meta["model"])
    keep = tuple(KEEP_FP32[spec.name] if keep_fp32 is None else keep_fp32)
    excluded = kept_nodes(fp32, keep)
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    extra = {"CalibPercentile": PERCENTILE} if method == "percentile" else {}
    activations = QuantType.QUInt8 if target == "ort" else QuantType.QInt8
    extra.update({"WeightSymmetric": True, "ActivationSymmetric": target == "trt"})
    with tempfile.TemporaryDirectory(prefix="hw2rt-int8-") as tmp, atomic_path(out_path) as final:
        # the quantizer writes calibration scratch files beside its output: keep them in tmp
        staged = Path(tmp) / "int8.onnx"
        with _quiet():
            quantize_static(str(fp32_path), str(staged), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=activations, weight_type=QuantType.QInt8,
                            reduce_range=top == REDUCED_RANGE, calibrate_method=calib,
                            nodes_to_exclude=excluded, extra_options=extra)
        model = onnx.load(str(staged))
        _check_weight_range(model, top, str(out_path))
        int8 = {"method": method, "percentile": PERCENTILE if method == "percentile" else None,
                "target": target, "activations": "uint8" if target == "ort" else "int8 symmetric",
                "weight_range": top,
                "keep_fp32": list(keep), "fp32_nodes": len(excluded), "calibration": calibration or {},
                "calibration_batches": len(feeds)}
        meta.update({"precision": "int8", "int8": json.dumps(int8, sort_keys=True)})
        write_metadata(model, meta)
        check_graph(model, spec, where=str(out_path))
        onnx.save(model, str(final))
    return Path(out_path)


def _check_weight_range(model: onnx.ModelProto, limit: int, where: str):
    """Every int8 weight tensor (rank >= 2) of `model` lies in [-limit, limit]."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT8 and len(init.dims) >= 2:
            top = int(np.abs(numpy_helper.to_array(init).astype(np.int16)).max())
            if top > limit:
                raise Hw2rtError(f"{where}: int8 weight {init.name} reaches {top}, over the range {limit}")


def export_int8(net, model: str, out_path, *, method: str = DEFAULT_METHOD, keep_fp32=None,
                calibration_images=None, fp32_path=None, source_sha256: str | None = None,
                target: str = "ort") -> Path:
    """`net`'s int8 graph: its fp32 export (`fp32_path`, or exported here), calibration feeds recorded
    on the torch fp32 engine over the model's own loop (runtime/calibration.py), then `quantize_int8`."""
    from hw2rt.engines.torch import TorchEngine
    from hw2rt.export.onnx_export import export_onnx
    from hw2rt.runtime.calibration import calibration_recipe, record_calibration

    recipe = calibration_recipe(model, calibration_images)  # bad input refused before any work
    with tempfile.TemporaryDirectory(prefix="hw2rt-int8-") as tmp:
        if fp32_path is None:
            fp32_path = export_onnx(net, model, Path(tmp) / "fp32.onnx", source_sha256=source_sha256)
        feeds = record_calibration(TorchEngine(net, model), recipe)
        return quantize_int8(fp32_path, out_path, feeds, method=method, keep_fp32=keep_fp32,
                             calibration=recipe, target=target)
