"""The torch backend: the reference (eager fp32), optionally `torch.compile`d; bf16 anywhere,
fp16 on CUDA only.

fp16 runs the same converted module the fp16 ONNX graph is exported from (export/fp16.py:
fp16 interior with fp32 islands, spec dtypes at the edges), so torch-fp16 and ONNX-fp16 are
the same computation. CPU fp16 is refused: torch's CPU fp16 kernels are slow and not what
any deployment runs; the fp16 graph on the CPU is served by the ort backend.

bf16 is autocast (torch picks bf16 for convolutions and matmuls and keeps reductions such as
the norms and softmax in fp32; sin/cos of the face UNet's timestep never leave fp32) over a
BatchNorm-folded, channels-last copy of the module. Inputs and outputs keep the spec's dtypes.
It pays off where the hardware has bf16 dot products (AVX512-BF16/AMX CPUs, Ampere+ GPUs); a
CPU without them (AVX2 only) emulates bf16 and runs it several times slower than fp32 (see
benchmarks/RESULTS.md). bf16 has no ONNX export: it lives on the torch backend only.
"""
import copy

import torch
from torch import nn

from hw2rt.engines.base import Engine
from hw2rt.errors import Hw2rtError
from hw2rt.export import fold_batchnorm, to_fp16
from hw2rt.models import get_spec

TORCH_PRECISIONS = ("fp32", "fp16", "bf16")


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, net: nn.Module, model: str, *, precision: str = "fp32", device: str = "cpu",
                 compile: bool | dict = False, threads: int | None = None, max_batch: int | None = None,
                 source: str = "", channels_last: bool | None = None):
        """compile: True for `torch.compile(module)`, or a dict of torch.compile options
        (e.g. {"dynamic": True}: one compiled graph serves every batch size).
        channels_last: run a BatchNorm-folded, channels-last copy (default: for bf16 only). In
        fp32 on a CPU it is a cheap speed-up for some networks (see benchmarks/RESULTS.md)."""
        spec = get_spec(model)
        device = torch.device(device)
        if precision not in TORCH_PRECISIONS:
            raise Hw2rtError(f"unknown precision {precision!r}; choose one of {', '.join(TORCH_PRECISIONS)}")
        if precision == "fp16" and device.type != "cuda":
            raise Hw2rtError("the torch backend runs fp16 only on CUDA; on the CPU use --backend ort "
                             "(it runs the fp16 graph), --precision bf16 or --precision fp32")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise Hw2rtError("device cuda requested, but torch sees no CUDA GPU")
        super().__init__(model, spec.inputs, spec.outputs, device=device, precision=precision,
                         max_batch=max_batch, source=source)
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread count
        self.channels_last = precision == "bf16" if channels_last is None else channels_last
        if precision == "fp16":
            module = to_fp16(net)
            if self.channels_last:
                module = module.to(memory_format=torch.channels_last)
        elif self.channels_last:
            module = fold_batchnorm(copy.deepcopy(net).eval()).to(memory_format=torch.channels_last)
        elif any(p.device != self.device for p in net.parameters()):
            module = copy.deepcopy(net)  # never move the caller's module (it may be a CPU reference)
        else:
            module = net
        self.module = module.to(self.device).eval()
        options = compile if isinstance(compile, dict) else {}
        self._forward = torch.compile(self.module, **options) if compile else self.module

    def _run(self, feeds: dict) -> dict:
        args = [feeds[s.name] for s in self.inputs]
        if self.channels_last:
            args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args]
        with torch.inference_mode(), torch.autocast(self.device.type, torch.bfloat16,
                                                    enabled=self.precision == "bf16"):
            out = self._forward(*args)
        out = out if isinstance(out, tuple) else (out,)
        # Autocast hands back bf16, and channels-last convs strided, tensors: the contract is
        # the spec's dtype, contiguous.
        return {s.name: o.to(s.dtype).contiguous() if self.channels_last or self.precision == "bf16" else o
                for s, o in zip(self.outputs, out)}

    def close(self):
        self.module = self._forward = None
        super().close()
