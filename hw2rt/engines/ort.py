"""The ONNX Runtime backend: CPU everywhere; CUDA (and TensorRT) execution providers when
onnxruntime-gpu is installed, with I/O bound straight to torch CUDA tensors.

Only hw2rt's own exports are accepted: the model name, and with it the I/O contract, comes
from the graph's hw2rt metadata, and the graph's inputs/outputs must match that spec. A file
that is missing, truncated, corrupt, foreign or of another model is a Hw2rtError naming it.

fp16 graphs run on the CPU too: ONNX Runtime inserts fp32 Casts around fp16 nodes that have no
CPU kernel, so the arithmetic is fp16-rounded tensors computed in fp32. That makes fp16
accuracy testable here; it is not a CPU speed-up (use fp32 on the CPU). fp8 graphs likewise: fp8-rounded
tensors, fp32 arithmetic (what TensorRT computes in fp8 on a Hopper GPU), to check their numerics.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from hw2rt.engines.base import Engine, check_graph_io, graph_spec, output_shapes
from hw2rt.errors import Hw2rtError, first_line
from hw2rt.export import META_PREFIX

_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64,
              "tensor(int32)": torch.int32}
_NP = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64, torch.int32: np.int32}


def available_providers() -> list:
    import onnxruntime as ort
    return ort.get_available_providers()


def session_options(threads: int | None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads or 0)  # 0: ORT's default (one per physical core)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: cast-insertion notes for fp16 graphs are expected
    return so


def gpu_providers(device: torch.device, *, tensorrt: bool = True, trt_cache_dir: Path | None = None) -> list:
    """CUDA EP (on torch's current stream, so bound torch tensors need no extra sync), preceded by
    the TensorRT EP when present and wanted (its engines cached under `trt_cache_dir`)."""
    avail = available_providers()
    if "CUDAExecutionProvider" not in avail:
        raise Hw2rtError("onnxruntime has no CUDAExecutionProvider here: install onnxruntime-gpu "
                         "(uninstall onnxruntime first) or use --device cpu")
    if not torch.cuda.is_available():
        raise Hw2rtError("device cuda requested, but torch sees no CUDA GPU")
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = str(torch.cuda.current_stream(index).cuda_stream)
    providers = [("CUDAExecutionProvider", {"device_id": index, "user_compute_stream": stream}),
                 "CPUExecutionProvider"]
    if tensorrt and "TensorrtExecutionProvider" in avail:
        opts = {"device_id": index, "user_compute_stream": stream}
        if trt_cache_dir is not None:
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
            opts.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(trt_cache_dir),
                        trt_timing_cache_enable="True", trt_timing_cache_path=str(trt_cache_dir))
        providers.insert(0, ("TensorrtExecutionProvider", opts))
    return providers


def _session(path: Path, threads, providers, **kwargs):
    import onnxruntime as ort
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=providers, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise Hw2rtError(f"{path}: not a loadable ONNX model (truncated or corrupt?): "
                         f"{first_line(exc)}") from None


def _warn_if_it_saturates(path: Path, meta: dict):
    """A full-range int8 graph on a CPU whose int8 kernels saturate int16 pair sums (x86 without VNNI,
    export/int8.py) computes a few sums differently from where it was exported: say so."""
    from hw2rt.export.int8 import FULL_RANGE, REDUCED_RANGE, cpu_saturates_int8

    top = json.loads(meta.get("int8", "{}")).get("weight_range", FULL_RANGE)
    if top > REDUCED_RANGE and cpu_saturates_int8():
        low = REDUCED_RANGE
        warnings.warn(f"{path}: int8 weights span [-{top}, {top}] and this CPU has no VNNI, where ONNX "
                      f"Runtime clips a few int8 sums; export it here for [-{low}, {low}]",
                      stacklevel=3)


class OrtEngine(Engine):
    backend = "ort"

    def __init__(self, path, *, model: str | None = None, device: str = "cpu", threads: int | None = None,
                 max_batch: int | None = None, tensorrt_ep: bool = True, trt_cache_dir=None):
        path = Path(path)
        device = torch.device(device)
        if not path.is_file():
            raise Hw2rtError(f"{path}: ONNX file not found")
        if device.type == "cuda":
            providers = gpu_providers(device, tensorrt=tensorrt_ep,
                                      trt_cache_dir=Path(trt_cache_dir) if trt_cache_dir else None)
        elif device.type == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise Hw2rtError(f"the ort backend runs on cpu or cuda, not {device.type}")
        session = _session(path, threads, providers)
        meta = {k.removeprefix(META_PREFIX): v for k, v in session.get_modelmeta().custom_metadata_map.items()
                if k.startswith(META_PREFIX)}
        if meta.get("precision") == "fp8":  # the one rewrite that is wrong for fp8 (export/fp8.py)
            session = _session(path, threads, providers, disabled_optimizers=["ReluQuantRewrite"])
        spec = graph_spec(path, meta, model)
        if meta.get("precision") == "int8" and device.type == "cpu":
            _warn_if_it_saturates(path, meta)
        check_graph_io(path, spec, *([(a.name, _ORT_TYPES.get(a.type), len(a.shape)) for a in got]
                                     for got in (session.get_inputs(), session.get_outputs())))
        super().__init__(spec.name, spec.inputs, spec.outputs, device=device,
                         precision=meta.get("precision", "fp32"), max_batch=max_batch, source=str(path))
        self.path = path
        self.metadata = meta
        self.session = session
        self.providers = session.get_providers()
        self._out_names = [s.name for s in spec.outputs]

    def _run(self, feeds: dict) -> dict:
        try:
            if self.device.type == "cuda":
                return self._run_bound(feeds)
            outs = self.session.run(self._out_names,
                                    {k: v.detach().contiguous().numpy() for k, v in feeds.items()})
        except Hw2rtError:
            raise
        except Exception as exc:  # noqa: BLE001 -- ORT's error types are not importable portably
            raise Hw2rtError(f"{self.name}: onnxruntime failed: {first_line(exc)}") from None
        return {n: torch.from_numpy(o) for n, o in zip(self._out_names, outs)}

    def _run_bound(self, feeds: dict) -> dict:
        """GPU: inputs and outputs stay torch CUDA tensors; ORT reads and writes them in place."""
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        binding = self.session.io_binding()
        for s in self.inputs:
            t = feeds[s.name].contiguous()
            feeds[s.name] = t  # keep alive until the run ends
            binding.bind_input(s.name, "cuda", index, _NP[s.dtype], tuple(t.shape), t.data_ptr())
        shapes = output_shapes(self.inputs, self.outputs, feeds)
        outs = {}
        for s in self.outputs:
            outs[s.name] = torch.empty(shapes[s.name], dtype=s.dtype, device=self.device)
            binding.bind_output(s.name, "cuda", index, _NP[s.dtype], shapes[s.name], outs[s.name].data_ptr())
        self.session.run_with_iobinding(binding)
        return outs

    def close(self):
        self.session = None
        super().close()
