"""The torch backend: the reference (eager fp32, the module as given), optionally `torch.compile`d;
fp16 (CUDA only) and bf16 through one reduced-precision policy per model.

fp16 / bf16: a copy of the module, eval mode, BatchNorm folded in fp32, parameters in the reduced
dtype except the fp32 islands below, channels-last activations. Inputs and outputs keep the
spec's dtypes (float inputs are cast down at the edge, outputs cast back to fp32), so every
engine has the same I/O contract. CPU fp16 is refused: torch's CPU fp16 kernels are slow and not
what any deployment runs; the fp16 graph on the CPU is served by the ort backend. bf16 pays off
where the hardware has bf16 dot products (AVX512-BF16/AMX CPUs, Ampere+ GPUs); an AVX2-only CPU
emulates it several times slower than fp32 (benchmarks/RESULTS.md).

The exported fp16 graph has its own, wider islands (export/fp16.py: GroupNorm and softmax in
fp32 too), because ONNX Runtime's and TensorRT's fp16 kernels need not accumulate in fp32.
"""
import copy

import torch
from torch import nn

from hw2rt.device import usable_device
from hw2rt.engines.base import Engine
from hw2rt.errors import Hw2rtError
from hw2rt.export.fp16 import fold_batchnorm, make_island
from hw2rt.models import get_spec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Submodules that stay fp32 under fp16 and bf16, per model. The face UNet's `time` turns the raw
# timestep (up to 999) into sin/cos: in fp16 t*inv_freq keeps ~3 significant digits and the phases
# are off by up to a quarter turn. GroupNorm and softmax get no island: torch's kernels accumulate
# fp16/bf16 inputs in fp32 (mean/variance, exp-sum), and a full fp32 GroupNorm costs two extra cast
# passes over the activations per norm (about 90 norms in the face UNet). `benchmarks/island_policy.py`
# (RESULTS.md, 2026-12-02; torch's CPU kernels standing in for CUDA's) against parity's budgets
# (per call 1e-2 fp16 / 3e-2 bf16, image MSE 0.3): this fp16 policy needs at most 1.9e-3 per call
# and 0.15 end to end (damped random face UNet; bundled face 0.098, digits 0.016), the exported
# graph's wider islands 1.6e-3 and 0.13 (0.064, 0.017): both meet the budgets and this one does less
# work. What that saves on a GPU only a GPU can measure (none was lent). bf16 meets the per-call
# budget everywhere and the image budget on the digits (0.21 bundled) but not on the faces (2.6 random,
# 1.3 bundled, 20 DDIM steps): its 8-bit mantissa through DDIM's x0 prediction, not a missing island
# (autocast, which keeps every norm in fp32, gave 2.6 / 1.4). The digit UNet casts t/T to the
# activation dtype inside its forward, so an island on its time MLP would not restore t.
FP32_ISLANDS = {"face_unet": ("time",), "digit_unet": (), "dann": (), "digit_classifier": ()}


def fp32_islands(model: str, precision: str) -> tuple:
    """The submodules (qualified names; a name covers everything under it) that stay fp32 when `model`
    runs in `precision`: the one source for every engine's fp16/bf16 policy on the fp32 graph."""
    return FP32_ISLANDS[model] if precision in ("fp16", "bf16") else ()

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
# The reduced-precision module's activation layout, per device type. The CPU's oneDNN convolutions
# run channels-last faster (RESULTS.md); torch's CUDA GroupNorm works in NCHW only, so channels-last
# there converts layouts twice per norm (about 90 in the face UNet). The gpu suite times both.
DEFAULT_MEMORY_FORMAT = {"cpu": "channels_last", "cuda": "contiguous"}


def memory_format_for(device: torch.device, memory_format: str | None = None) -> str:
    """`memory_format` checked, or the device's default (DEFAULT_MEMORY_FORMAT)."""
    name = memory_format or DEFAULT_MEMORY_FORMAT.get(torch.device(device).type, "contiguous")
    if name not in MEMORY_FORMATS:
        raise Hw2rtError(f"unknown memory format {name!r}; choose one of {', '.join(MEMORY_FORMATS)}")
    return name


def same_device(a, b) -> bool:
    """Whether two devices are one: "cuda" names the current GPU, which its tensors report as "cuda:N"
    (torch.device("cuda") != torch.device("cuda:0"), and a module on it would be copied for nothing)."""
    def full(d):
        d = torch.device(d)
        if d.type == "cuda" and d.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return d
    return full(a) == full(b)


def reduced_precision_module(net: nn.Module, model: str, precision: str, device=None,
                             memory_format: str = "channels_last") -> nn.Module:
    """The torch backend's fp16/bf16 module for `model`: a copy, eval mode, BatchNorm folded (in
    fp32), parameters in `precision`, FP32_ISLANDS kept fp32, in `memory_format`; the original untouched."""
    dtype = DTYPES[precision]
    net = fold_batchnorm(copy.deepcopy(net).eval())
    net.requires_grad_(False)
    # Islands are set aside before the cast: a buffer cast to fp16 and back has lost its digits.
    kept = {name: copy.deepcopy(net.get_submodule(name)).float() for name in fp32_islands(model, precision)}
    net = net.to(dtype)
    for name, sub in kept.items():
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, sub)
        make_island(sub, dtype)
    return net.to(device=device, memory_format=MEMORY_FORMATS[memory_format])


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, net: nn.Module, model: str, *, precision: str = "fp32", device: str = "cpu",
                 compile: bool | dict = False, threads: int | None = None, max_batch: int | None = None,
                 source: str = "", memory_format: str | None = None, cache_dir=None):
        """compile: True: on the CPU the module's AOTInductor packages, built once and cached under
        `cache_dir` (engines/compiled.py), on CUDA `torch.compile(module)`; or a dict of torch.compile
        options (e.g. {"dynamic": False}: one compiled graph per input shape, for CUDA-graph buckets).
        memory_format: fp16/bf16 activations' layout, "channels_last" or "contiguous"; default: the
        device's (DEFAULT_MEMORY_FORMAT)."""
        spec = get_spec(model)
        device = usable_device(device)
        if precision not in DTYPES:
            raise Hw2rtError(f"unknown precision {precision!r}; choose one of {', '.join(DTYPES)}")
        if precision == "fp16" and device.type != "cuda":
            raise Hw2rtError("the torch backend runs fp16 only on CUDA; on the CPU use --backend ort "
                             "(it runs the fp16 graph), --precision bf16 or --precision fp32")
        super().__init__(model, spec.inputs, spec.outputs, device=device, precision=precision,
                         max_batch=max_batch, source=source)
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread count
        self.dtype = DTYPES[precision]
        self.islands = fp32_islands(model, precision)
        self.memory_format = memory_format_for(self.device, memory_format)
        if precision != "fp32":
            module = reduced_precision_module(net, model, precision, self.device, self.memory_format)
        elif not all(same_device(p.device, self.device) for p in net.parameters()):
            # never move the caller's module (it may be a CPU reference)
            module = copy.deepcopy(net).to(self.device)
        else:
            module = net
        self.module = module.eval()
        self.compiled = bool(compile)
        if compile is True and self.device.type == "cpu":
            from hw2rt.engines.compiled import CompiledModule
            from hw2rt.export import state_dict_sha256

            self._forward = CompiledModule(self.module, model, weights_sha256=state_dict_sha256(net),
                                           precision=precision, islands=self.islands,
                                           memory_format=self.memory_format, cache_dir=cache_dir)
        elif compile:
            self._forward = torch.compile(self.module, **(compile if isinstance(compile, dict) else {}))
        else:
            self._forward = self.module

    def describe(self) -> dict:
        return {**super().describe(), "islands": list(self.islands), "compiled": self.compiled,
                "memory_format": self.memory_format}

    def _run(self, feeds: dict) -> dict:
        args = [feeds[s.name] for s in self.inputs]
        if self.precision != "fp32":
            args = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
            layout = MEMORY_FORMATS[self.memory_format]
            args = [a.contiguous(memory_format=layout) if a.dim() == 4 else a for a in args]
        with torch.inference_mode():
            out = self._forward(*args)
        out = out if isinstance(out, tuple) else (out,)
        if self.precision == "fp32":
            return {s.name: o for s, o in zip(self.outputs, out)}
        # The contract is the spec's dtype, contiguous (channels-last convs hand back strided tensors).
        return {s.name: o.to(s.dtype).contiguous() for s, o in zip(self.outputs, out)}

    def close(self):
        self.module = self._forward = None
        super().close()
