"""The torch backend: the reference (eager fp32, the module as given), optionally `torch.compile`d;
fp16 (CUDA only) and bf16 through one reduced-precision policy per model.

fp16 / bf16: a copy of the module, eval mode, BatchNorm folded in fp32, parameters in the reduced
dtype except the fp32 islands below, channels-last activations. A tensor keeps the dtype of the
module that made it: every reduced-precision module with weights of its own casts the float inputs
it receives down, an island casts them up and hands fp32 on (so an island's output, the network's
input and whatever they are added to stay fp32 until a reduced-precision module reads them).
Inputs and outputs keep the spec's dtypes (outputs are cast back to fp32), so every engine has the
same I/O contract. CPU fp16 is refused: torch's CPU fp16 kernels are slow and not
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
from hw2rt.export.fp16 import cast_floats, fold_batchnorm
from hw2rt.models import get_spec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Submodules that stay fp32 under fp16 and bf16, per precision and model. The face UNet's `time` turns
# the raw timestep (up to 999) into sin/cos: in fp16 t*inv_freq keeps ~3 significant digits and the
# phases are off by up to a quarter turn. GroupNorm and softmax get no fp16 island: torch's kernels
# accumulate fp16/bf16 inputs in fp32 (mean/variance, exp-sum), and a full fp32 GroupNorm costs two
# extra cast passes over the activations per norm (about 90 norms in the face UNet).
# `benchmarks/island_policy.py` (RESULTS.md, 2026-12-02; torch's CPU kernels standing in for CUDA's)
# against parity's budgets (per call 1e-2 fp16 / 3e-2 bf16, image MSE 0.3): this fp16 policy needs at
# most 1.9e-3 per call and 0.15 end to end (damped random face UNet; bundled face 0.098, digits 0.016),
# the exported graph's wider islands 1.6e-3 and 0.13 (0.064, 0.017): both meet the budgets and this one
# does less work. What that saves on a GPU only a GPU can measure (none was lent). The digit UNet casts
# t/T to the dtype of its input x inside its forward (fp32: the network's input stays fp32 until a
# module reads it), so an island on its time MLP would not be needed to keep t.
#
# bf16 (8 mantissa bits to fp16's 11) needs more. With the time embedding alone the bundled face UNet
# missed the image budget (parity's 20 DDIM steps: 1.19 on this Zen 4; the face job's loop, 50 steps,
# 8 images at 64x64: 2.20), and no set of whole-module islands could fix it while islands handed bf16
# on: rounding only the ~45 tensors between the top-level blocks (every block fp32) still gave 0.53.
# The error is everywhere, not in one place: rounding only the weights gave 1.28, only the activations
# 1.20, only the network's input x_t 0.39, only eps 0.17, and a precision schedule does not help (bf16
# on the calls with t < 200 alone: 0.25; the early steps' errors are the large ones, and bf16 on both
# ends partly cancels: t >= 800 alone 6.6). So islands now hand fp32 on (the module docstring), and the
# island search (`hw2rt export --precision bf16 --search-islands`, verify/islands.py; RESULTS.md "bf16
# islands for the face UNet", 2026-12-06) chose, from the weight-owning modules grouped by role and
# feature-map size: the first conv, the output head, the 64x64 ResBlocks' second half (norm2, conv2)
# and the 32x32 ones' first half (norm1, conv1), the sampling convs between them, the 1x1 skips at
# 64x64 to 16x16, and every ResBlock's timestep projection (time.1). The face job's loop: image MSE
# 0.29 on the search's images, 0.22 on ten others (64x64 and 256x256); parity's default 0.24. The
# top-level `time` MLP may run bf16 once the per-block projections are fp32. Per call (1 thread) that is
# 1.3-1.8x the fp32 engine, of which the channels-last layout alone is 1.2-1.5x: with 67 islands in a
# base-16 UNet bf16 itself buys 5-20%. A checkpoint of other weights or widths needs its own search.
_FACE_RESBLOCKS = (*(f"down{i}" for i in (2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18)), "mid1", "mid2",
                   *(f"up{i}" for i in (1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23)))
FACE_BF16_ISLANDS = (
    "down1", "out.0", "out.2", "down4.0", "up20.1",
    *(f"{b}.resblocks.{m}" for b in ("down2", "down3", "up21", "up22", "up23") for m in ("norm2", "conv2")),
    *(f"{b}.resblocks.{m}" for b in ("down5", "down6", "up17", "up18", "up19") for m in ("norm1", "conv1")),
    *(f"{b}.resblocks.skip" for b in ("down8", "up13", "up14", "up15", "up17", "up18", "up19", "up21", "up22",
                                      "up23")),
    *(f"{b}.resblocks.time.1" for b in _FACE_RESBLOCKS),
)
FP32_ISLANDS = {
    "fp16": {"face_unet": ("time",), "digit_unet": (), "dann": (), "digit_classifier": ()},
    "bf16": {"face_unet": FACE_BF16_ISLANDS, "digit_unet": (), "dann": (), "digit_classifier": ()},
}


def fp32_islands(model: str, precision: str) -> tuple:
    """The submodules (qualified names; a name covers everything under it) that stay fp32 when `model`
    runs in `precision`: the one source for every engine's fp16/bf16 policy on the fp32 graph (torch's
    module here, OpenVINO's bf16 marks). fp32 (and the quantized graphs) have none."""
    return FP32_ISLANDS.get(precision, {}).get(model, ())

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
                             memory_format: str = "channels_last", islands=None) -> nn.Module:
    """The torch backend's fp16/bf16 module for `model`: a copy, eval mode, BatchNorm folded (in
    fp32), parameters in `precision`, the fp32 islands (`islands`, default `fp32_islands(model,
    precision)`) kept fp32, in `memory_format`; the original untouched. Every module with weights of its
    own outside the islands casts its float inputs to `precision`; an island casts them to fp32 and
    hands its outputs on in fp32 (the module docstring)."""
    dtype = DTYPES[precision]
    islands = fp32_islands(model, precision) if islands is None else tuple(islands)
    net = fold_batchnorm(copy.deepcopy(net).eval())
    net.requires_grad_(False)
    names = dict(net.named_modules())
    unknown = [name for name in islands if name not in names]
    if unknown:
        raise Hw2rtError(f"fp32 islands {unknown}: no such module in {type(net).__name__}")
    # Islands are set aside before the cast: a buffer cast to fp16 and back has lost its digits.
    kept = {name: copy.deepcopy(net.get_submodule(name)).float() for name in islands}
    net = net.to(dtype)
    fp32 = set()
    for name, sub in kept.items():
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, sub)
        fp32.update(id(m) for m in sub.modules())
    for name, sub in kept.items():
        if not any(name.startswith(other + ".") for other in kept):  # the outermost island casts
            sub.register_forward_pre_hook(lambda _m, args: cast_floats(args, torch.float32))
    for m in net.modules():
        own = any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
        if own and id(m) not in fp32:
            m.register_forward_pre_hook(lambda _m, args: cast_floats(args, dtype))
    return net.to(device=device, memory_format=MEMORY_FORMATS[memory_format])


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, net: nn.Module, model: str, *, precision: str = "fp32", device: str = "cpu",
                 compile: bool | dict = False, threads: int | None = None, max_batch: int | None = None,
                 source: str = "", memory_format: str | None = None, islands=None, cache_dir=None):
        """compile: True: on the CPU the module's AOTInductor packages, built once and cached under
        `cache_dir` (engines/compiled.py), on CUDA `torch.compile(module)`; or a dict of torch.compile
        options (e.g. {"dynamic": False}: one compiled graph per input shape, for CUDA-graph buckets).
        memory_format: fp16/bf16 activations' layout, "channels_last" or "contiguous"; default: the
        device's (DEFAULT_MEMORY_FORMAT). islands: fp16/bf16: the fp32 islands (module names) instead of
        `fp32_islands(model, precision)`; the island search (verify/islands.py) tries its sets here."""
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
        if islands is not None and precision == "fp32":
            raise Hw2rtError("fp32 islands belong to a reduced precision (fp16, bf16), not fp32")
        self.islands = fp32_islands(model, precision) if islands is None else tuple(islands)
        self.memory_format = memory_format_for(self.device, memory_format)
        if precision != "fp32":
            module = reduced_precision_module(net, model, precision, self.device, self.memory_format,
                                              self.islands)
        elif not all(same_device(p.device, self.device) for p in net.parameters()):
            # never move the caller's module (it may be a CPU reference)
            module = copy.deepcopy(net).to(self.device)
        else:
            module = net
        self.module = module.eval()
        self.compiled = bool(compile)
        if compile is True and self.device.type == "cpu":
            from hw2rt.engines.compiled import CompiledModule
            from hw2rt.export.onnx_export import state_dict_sha256

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
            # float inputs enter as given (fp32): the modules that read them cast them (an island not at all)
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
