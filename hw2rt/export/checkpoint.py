"""`hw2rt export`: a checkpoint to the graph of the precision asked for. The one place that dispatches by
precision, above the exporters: the fp32/fp16 exporter (onnx_export.py) knows nothing of the quantized ones
(int8.py, fp8.py), which build on it."""
from pathlib import Path

from hw2rt.errors import Hw2rtError
from hw2rt.export.fp8 import export_fp8
from hw2rt.export.int8 import DEFAULT_METHOD, export_int8
from hw2rt.export.onnx_export import DEFAULT_OPSET, export_onnx
from hw2rt.options import QUANTIZED


def export_checkpoint(checkpoint, out_path, *, model: str | None = None, precision: str = "fp32",
                      opset: int = DEFAULT_OPSET, dims: dict | None = None, method: str | None = None,
                      calibration_images=None, keep_fp32=None) -> Path:
    """`hw2rt export`: load a checkpoint strictly and export it; the file's SHA-256 goes into the metadata.
    int8: quantized from the fp32 export (export/int8.py; `method`, `calibration_images`, `keep_fp32`);
    fp8: the same calibration's E4M3 graph (export/fp8.py)."""
    from hw2rt.checkpoints import file_sha256, load_model

    net, name, _ = load_model(checkpoint, model)
    if precision in QUANTIZED:
        if opset != DEFAULT_OPSET or dims:
            raise Hw2rtError(f"{precision} exports quantize the default fp32 export: no --opset or --size")
        quantize = export_int8 if precision == "int8" else export_fp8
        return quantize(net, name, out_path, method=method or DEFAULT_METHOD, keep_fp32=keep_fp32,
                        calibration_images=calibration_images, source_sha256=file_sha256(checkpoint))
    if method is not None or calibration_images is not None or keep_fp32 is not None:
        raise Hw2rtError("--calibration-method, --calibration-images and --keep-fp32 belong to "
                         "--precision int8 and fp8")
    return export_onnx(net, name, out_path, precision=precision, opset=opset, dims=dims,
                       source_sha256=file_sha256(checkpoint))
