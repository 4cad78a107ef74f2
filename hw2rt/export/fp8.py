"""fp8 graphs (E4M3) for TensorRT on Hopper and Ada GPUs, from the int8 graph's calibration.

Hopper runs FP8 matrix maths at twice its fp16 rate; TensorRT builds an fp8 QDQ graph as an explicitly
quantized, strongly typed plan, as it does the int8 one. The fp8 graph is the symmetric int8 graph
(export/int8.py, target "trt": the same calibration, method and nodes kept fp32) rewritten:

- activations: every QuantizeLinear/DequantizeLinear pair keeps its place; its scale becomes
  amax / 448 (448: E4M3's largest finite value), where amax = int8 scale x 127 is the range the
  calibration chose, and its zero point becomes float8e4m3fn 0 (saturating casts, opset 19);
- weights of Conv, ConvTranspose, Gemm and MatMul: float8e4m3fn per output channel (the int8 graph's
  axis), requantized from the fp32 export's weights with scale amax / 448 of each channel;
- biases and the other quantized constants (the int8 graph's int32 biases, elementwise constants):
  the fp32 tensors themselves (TensorRT adds biases in high precision; fp8 elementwise constants
  would only lose accuracy).

ONNX Runtime's CPU provider runs these graphs too (fp8-rounded tensors computed in fp32, no faster
than fp32): that is how the numerics are proven where no GPU is. One of its graph rewrites
(ReluQuantRewrite: a Relu before a QuantizeLinear is dropped when the zero point is the type's
minimum, a check written for int8/uint8 only) removes Relus before fp8 QuantizeLinears, so the ort
engine disables that rewrite for fp8 graphs (engines/ort.py).
"""
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from hw2rt.errors import Hw2rtError
from hw2rt.export.onnx_export import check_graph, read_metadata, write_metadata
from hw2rt.io import atomic_path
from hw2rt.models import get_spec

E4M3_MAX = 448.0
INT8_MAX = 127.0  # the symmetric int8 range [-127, 127] of the int8 graph's scales
FP8_OPSET = 19  # QuantizeLinear/DequantizeLinear with float8 types
MATRIX_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _fp8_tensor(name: str, values) -> TensorProto:
    import ml_dtypes

    a = np.asarray(values, np.float32).astype(ml_dtypes.float8_e4m3fn)  # round to nearest, saturating
    t = TensorProto(name=name, data_type=TensorProto.FLOAT8E4M3FN, dims=a.shape)
    t.raw_data = a.view(np.uint8).tobytes()
    return t


def _per_channel_fp8(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(weight / scale, scale): scale = amax / 448 per channel along `axis` (per tensor for None)."""
    if axis is None:
        amax = np.abs(weight).max()
        scale = np.float32(max(amax, 1e-12) / E4M3_MAX)
        return weight / scale, np.asarray(scale, np.float32)
    others = tuple(d for d in range(weight.ndim) if d != axis)
    scale = (np.maximum(np.abs(weight).max(axis=others), 1e-12) / E4M3_MAX).astype(np.float32)
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight / scale.reshape(shape), scale


def int8_to_fp8(int8: onnx.ModelProto, fp32: onnx.ModelProto) -> onnx.ModelProto:
    """The fp8 QDQ graph of the symmetric int8 QDQ graph `int8` (quantized from `fp32`)."""
    inits = {i.name: i for i in int8.graph.initializer}
    originals = {i.name: i for i in fp32.graph.initializer}
    consumers = {}
    for n in int8.graph.node:
        for name in n.input:
            consumers.setdefault(name, set()).add(n.op_type)
    replaced, nodes, rescaled = {}, [], set()
    for n in int8.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            nodes.append(n)
            continue
        x, scale, zero_point = n.input
        if x in inits:  # a constant's DequantizeLinear: a weight, a bias or an elementwise constant
            original = originals.get(x.removesuffix("_quantized"))
            if original is None:
                raise Hw2rtError(f"int8 graph: quantized constant {x} has no fp32 original")
            w = numpy_helper.to_array(original).astype(np.float32)
            if inits[x].data_type == TensorProto.INT8 and consumers[n.output[0]] <= set(MATRIX_OPS):
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1) if inits[scale].dims else None
                q, s = _per_channel_fp8(w, axis)
                replaced[x] = _fp8_tensor(x, q)
                replaced[scale] = numpy_helper.from_array(s, scale)
                replaced[zero_point] = _fp8_tensor(zero_point, np.zeros(s.shape, np.float32))
                nodes.append(n)
            else:
                replaced[n.output[0]] = numpy_helper.from_array(w, n.output[0])
            continue
        if inits[zero_point].data_type != TensorProto.INT8 or numpy_helper.to_array(inits[zero_point]).any():
            raise Hw2rtError("int8 graph: fp8 is rewritten from the symmetric int8 graph (target trt: "
                             "zero points int8 0)")
        if scale not in rescaled:
            s = numpy_helper.to_array(inits[scale]).astype(np.float32) * np.float32(INT8_MAX / E4M3_MAX)
            replaced[scale] = numpy_helper.from_array(s, scale)
            replaced[zero_point] = _fp8_tensor(zero_point, np.zeros(s.shape, np.float32))
            rescaled.add(scale)
        nodes.append(n)
    used = {name for n in nodes for name in n.input}
    initializers = [replaced.get(i.name, i) for i in int8.graph.initializer if i.name in used]
    initializers += [t for name, t in replaced.items() if name not in inits]
    out = onnx.ModelProto()
    out.CopyFrom(int8)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(initializers)
    return onnx.version_converter.convert_version(out, FP8_OPSET)


def export_fp8(net, model: str, out_path, *, fp32_path=None, int8_path=None, source_sha256: str | None = None,
               **int8_options) -> Path:
    """`net`'s fp8 graph: the symmetric int8 graph (`int8_path`, or exported here with `int8_options`:
    method, keep_fp32, calibration_images) rewritten by `int8_to_fp8`, written atomically."""
    from hw2rt.export.int8 import export_int8
    from hw2rt.export.onnx_export import export_onnx

    spec = get_spec(model)
    with tempfile.TemporaryDirectory(prefix="hw2rt-fp8-") as tmp:
        if fp32_path is None:
            fp32_path = export_onnx(net, model, Path(tmp) / "fp32.onnx", source_sha256=source_sha256)
        if int8_path is None:
            int8_path = export_int8(net, model, Path(tmp) / "int8.onnx", fp32_path=fp32_path, target="trt",
                                    **int8_options)
        int8 = onnx.load(str(int8_path))
        meta = read_metadata(int8)
        if meta.get("precision") != "int8" or json.loads(meta.get("int8", "{}")).get("target") != "trt":
            raise Hw2rtError(f"{int8_path}: fp8 is rewritten from an hw2rt int8 graph of target trt")
        fp8 = int8_to_fp8(int8, onnx.load(str(fp32_path)))
        meta.update({"precision": "fp8", "fp8": json.dumps({
            "format": "float8e4m3fn", "opset": FP8_OPSET,
            "activations": "per tensor, scale = int8 calibration amax / 448",
            "weights": "per output channel, scale = fp32 amax / 448", "biases": "fp32"}, sort_keys=True)})
        write_metadata(fp8, meta)
        check_graph(fp8, spec, where=str(out_path))
        with atomic_path(out_path) as final:
            onnx.save(fp8, str(final))
    return Path(out_path)
