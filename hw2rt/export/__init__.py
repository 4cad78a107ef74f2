"""ONNX export of the registered networks (fp32, and fp16 with fp32 islands), with hw2rt metadata."""
from hw2rt.export.checkpoint import export_checkpoint
from hw2rt.export.fp16 import Fp16Network, cast_floats, fold_batchnorm, to_fp16
from hw2rt.export.onnx_export import (
    DEFAULT_OPSET,
    EXPORTER,
    META_PREFIX,
    MIN_OPSET,
    PRECISIONS,
    check_graph,
    export_onnx,
    exporter_versions,
    hw2rt_version,
    prepare_module,
    read_metadata,
    state_dict_sha256,
    trace_dims,
)

__all__ = [
    "DEFAULT_OPSET", "EXPORTER", "META_PREFIX", "MIN_OPSET", "PRECISIONS", "Fp16Network", "cast_floats",
    "check_graph", "export_checkpoint", "export_onnx", "exporter_versions", "fold_batchnorm", "hw2rt_version",
    "prepare_module", "read_metadata", "state_dict_sha256", "to_fp16", "trace_dims",
]
