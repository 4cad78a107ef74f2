"""fp16 versions of the networks with fp32 islands, for export and for torch on CUDA.

TensorRT 10+/11 networks are strongly typed, so fp16 has to live in the graph itself: the
module is converted to fp16 *before* export and every dtype change becomes an explicit Cast.
Three computations break in fp16 and stay fp32 (DESIGN.md, "Precision and GPU rules"):

- the face UNet's sinusoidal timestep embedding: t * inv_freq reaches ~999 rad, where fp16's
  spacing (0.5) destroys the phase. The whole `TimeEmbedding` runs fp32; its output is cast down.
- GroupNorm: the mean/variance over C/G*H*W values overflow and cancel in fp16. Each GroupNorm
  keeps fp32 affine parameters; its input is cast up and its output cast down.
- softmax / log_softmax: exp() of fp16 logits saturates. Inside the forward these are plain
  function calls (not modules), so a TorchFunctionMode upcasts exactly those calls.

Graph inputs and outputs keep the registry's dtypes: float inputs enter fp32 and are cast to
fp16 at the top, float outputs are cast back to fp32. An engine therefore has the same I/O
contract in both precisions; only the interior is fp16.

BatchNorm is folded into the preceding Conv/Linear in fp32 before the cast, so the folded
weights are rounded once (folding fp16 weights would round twice).
"""
import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.overrides import TorchFunctionMode

from hw2rt.models.face_unet import TimeEmbedding

# Modules that run entirely in fp32 inside an fp16 network.
FP32_MODULES = (nn.GroupNorm, TimeEmbedding)
_SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.Tensor.softmax,
            torch.Tensor.log_softmax}


class Fp32Softmax(TorchFunctionMode):
    """Run softmax/log_softmax of reduced-precision tensors in fp32; return the input's dtype."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in _SOFTMAX and args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.float16
                and kwargs.get("dtype") is None):
            x = args[0]
            kwargs.pop("dtype", None)
            return func(x.float(), *args[1:], **kwargs).to(x.dtype)
        return func(*args, **kwargs)


def cast_floats(obj, dtype):
    """`obj` with every floating-point tensor in it (also inside tuples, lists, dicts) cast to `dtype`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast_floats(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: cast_floats(v, dtype) for k, v in obj.items()}
    return obj


def _to_fp32_inputs(module, args):
    return cast_floats(args, torch.float32)


def _to_fp16_output(module, args, output):
    return cast_floats(output, torch.float16)


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """In place: every eval-mode BatchNorm that directly follows a Conv2d/Linear inside a
    Sequential is folded into it (the BN becomes Identity). Returns `net`."""
    for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            a, b = seq[i], seq[i + 1]
            if isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d)) and not b.training and b.track_running_stats:
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(a, b), nn.Identity()
                elif isinstance(a, nn.Linear) and isinstance(b, nn.BatchNorm1d):
                    seq[i], seq[i + 1] = fuse_linear_bn_eval(a, b), nn.Identity()
    return net


class Fp16Network(nn.Module):
    """fp16 interior, spec dtypes at the edges: float inputs cast to fp16, float outputs to fp32."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *args):
        with Fp32Softmax():
            out = self.net(*cast_floats(args, torch.float16))
        return cast_floats(out, torch.float32)


def to_fp16(net: nn.Module) -> Fp16Network:
    """A converted copy of `net` (eval mode, BatchNorm folded, fp16 with the fp32 islands above).

    The original module is left untouched.
    """
    net = fold_batchnorm(copy.deepcopy(net).eval())
    for m in net.modules():
        if isinstance(m, FP32_MODULES):  # never round-trip through fp16 (inv_freq would lose digits)
            m.float()
            m.register_forward_pre_hook(_to_fp32_inputs)
            m.register_forward_hook(_to_fp16_output)
            continue
        for p in m.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.half()
        for k, b in m.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                m._buffers[k] = b.half()
    return Fp16Network(net).eval()
