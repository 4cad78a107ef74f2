"""The torch backend: the reference (eager fp32), optionally `torch.compile`d; fp16 on CUDA only.

fp16 runs the same converted module the fp16 ONNX graph is exported from (export/fp16.py:
fp16 interior with fp32 islands, spec dtypes at the edges), so torch-fp16 and ONNX-fp16 are
the same computation. CPU fp16 is refused: torch's CPU fp16 kernels are slow and not what
any deployment runs; the fp16 graph on the CPU is served by the ort backend.
"""
import copy

import torch
from torch import nn

from hw2rt.engines.base import Engine
from hw2rt.errors import Hw2rtError
from hw2rt.export import PRECISIONS, to_fp16
from hw2rt.models import get_spec


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, net: nn.Module, model: str, *, precision: str = "fp32", device: str = "cpu",
                 compile: bool = False, threads: int | None = None, max_batch: int | None = None, source: str = ""):
        spec = get_spec(model)
        device = torch.device(device)
        if precision not in PRECISIONS:
            raise Hw2rtError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if precision == "fp16" and device.type != "cuda":
            raise Hw2rtError("the torch backend runs fp16 only on CUDA; on the CPU use --backend ort "
                             "(it runs the fp16 graph) or --precision fp32")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise Hw2rtError("device cuda requested, but torch sees no CUDA GPU")
        super().__init__(model, spec.inputs, spec.outputs, device=device, precision=precision,
                         max_batch=max_batch, source=source)
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread count
        module = to_fp16(net) if precision == "fp16" else net
        if precision == "fp32" and any(p.device != self.device for p in net.parameters()):
            module = copy.deepcopy(net)  # never move the caller's module (it may be a CPU reference)
        self.module = module.to(self.device).eval()
        self._forward = torch.compile(self.module) if compile else self.module

    def _run(self, feeds: dict) -> dict:
        with torch.inference_mode():
            out = self._forward(*(feeds[s.name] for s in self.inputs))
        out = out if isinstance(out, tuple) else (out,)
        return {s.name: o for s, o in zip(self.outputs, out)}

    def close(self):
        self.module = self._forward = None
        super().close()
