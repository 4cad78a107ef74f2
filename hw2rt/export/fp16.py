"""fp16 versions of the networks with fp32 islands, for export and for torch on CUDA.

TensorRT 10+/11 networks are strongly typed, so fp16 has to live in the graph itself: the
module is converted to fp16 *before* export and every dtype change becomes an explicit Cast.
Three computations break in fp16 and stay fp32 by default (DESIGN.md, "Precision and GPU rules"):

- the face UNet's sinusoidal timestep embedding: t * inv_freq reaches ~999 rad, where fp16's
  spacing (0.5) destroys the phase. The whole `TimeEmbedding` runs fp32; its output is cast down.
- GroupNorm: the mean/variance over C/G*H*W values overflow and cancel in fp16. Each GroupNorm
  keeps fp32 affine parameters; its input is cast up and its output cast down.
- softmax / log_softmax: exp() of fp16 logits saturates. Inside the forward these are plain
  function calls (not modules), so a TorchFunctionMode (`Fp16Mode`) upcasts exactly those calls.

An island is named: a submodule's qualified name ("time.0", "down2.resblocks.norm1": the whole
module runs fp32), or "<module>.softmax" (the softmax calls made directly in that module's forward;
"softmax" at the top level). `to_fp16(net, islands)` takes any such set (the island search,
`hw2rt/verify/islands.py`, tries many); None is the default set above, and `Fp16Network.islands()` says
which islands a converted network used.

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

from hw2rt.errors import Hw2rtError
from hw2rt.models.face_unet import TimeEmbedding

# Modules that run entirely in fp32 inside an fp16 network by default.
FP32_MODULES = (nn.GroupNorm, TimeEmbedding)
SOFTMAX = ".softmax"
_SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.Tensor.softmax,
            torch.Tensor.log_softmax}


def softmax_island(module_name: str) -> str:
    return f"{module_name}{SOFTMAX}" if module_name else SOFTMAX.lstrip(".")


class Fp16Mode(TorchFunctionMode):
    """The function-level half of the conversion, by where the call runs (`scope`: the running
    modules' names, innermost last):

    - softmax/log_softmax of an fp16 tensor runs in fp32 (returning fp16) where the innermost
      module's softmax is an island (`sites`; None: everywhere);
    - `Tensor.float()` outside every module island stays fp16: the model's own request for fp32 (the
      face UNet's `t.float()` before its phase) is what an island grants, so without one that code
      runs fp16, as the rest of the interior does.

    `used` collects the softmax islands hit."""

    def __init__(self, sites: set | None, module_islands: set, scope: list):
        super().__init__()
        self.sites, self.module_islands, self.scope = sites, module_islands, scope
        self.used = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SOFTMAX and args and isinstance(args[0], torch.Tensor):
            site = softmax_island(self.scope[-1])
            x = args[0]
            if (x.dtype == torch.float16 and kwargs.get("dtype") is None
                    and (self.sites is None or site in self.sites)):
                self.used.add(site)
                kwargs.pop("dtype", None)
                return func(x.float(), *args[1:], **kwargs).to(x.dtype)
        elif func is torch.Tensor.float and not any(n in self.module_islands for n in self.scope):
            return args[0].half()
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


def make_island(sub: nn.Module, out_dtype: torch.dtype) -> nn.Module:
    """In place: fp32 `sub` runs on its inputs cast to fp32 and hands its float outputs on in `out_dtype`."""
    sub.register_forward_pre_hook(lambda _m, args: cast_floats(args, torch.float32))
    sub.register_forward_hook(lambda _m, _args, out: cast_floats(out, out_dtype))
    return sub


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
    """fp16 interior, spec dtypes at the edges: float inputs cast to fp16, float outputs to fp32.
    `module_islands`: the submodules kept fp32; `softmax_sites`: the softmax islands (None: all)."""

    def __init__(self, net: nn.Module, module_islands: list, softmax_sites: set | None):
        super().__init__()
        self.net, self.module_islands, self.softmax_sites = net, module_islands, softmax_sites
        self._scope = [""]  # the names of the running modules, innermost last
        self._last_mode = None
        for name, m in net.named_modules():
            if name:
                m.register_forward_pre_hook(self._enter(name))
                m.register_forward_hook(self._leave)

    def _enter(self, name):
        def hook(_module, _args):
            self._scope.append(name)
        return hook

    def _leave(self, _module, _args, _out):
        self._scope.pop()

    def forward(self, *args):
        self._scope[:] = [""]
        with Fp16Mode(self.softmax_sites, set(self.module_islands), self._scope) as mode:
            out = self.net(*cast_floats(args, torch.float16))
        self._last_mode = mode
        return cast_floats(out, torch.float32)

    def islands(self) -> list:
        """The islands this network used in its last forward (module islands, then softmax sites hit)."""
        if self._last_mode is None:
            raise RuntimeError("islands() is known after a forward")
        return [*self.module_islands, *sorted(self._last_mode.used)]


def default_module_islands(net: nn.Module) -> list:
    """The default module islands of `net`: every GroupNorm and TimeEmbedding, outermost first."""
    return [name for name, m in net.named_modules() if isinstance(m, FP32_MODULES)]


def to_fp16(net: nn.Module, islands=None) -> Fp16Network:
    """A converted copy of `net` (eval mode, BatchNorm folded, fp16 with fp32 islands).

    islands: None for the default (every GroupNorm and TimeEmbedding module, every softmax), or a
    collection of island names (module names and "<module>.softmax" sites; see the module docstring).
    A name that is not a submodule of `net` is an error; a softmax site that never runs is not
    (which sites exist is known only by running: `Fp16Network.islands()` after a forward).
    The original module is left untouched.
    """
    net = fold_batchnorm(copy.deepcopy(net).eval())
    names = dict(net.named_modules())
    if islands is None:
        modules, sites = default_module_islands(net), None
    else:
        sites = {i for i in islands if i == softmax_island("") or i.endswith(SOFTMAX)}
        modules = [i for i in islands if i not in sites]
        unknown = [i for i in modules + [s.removesuffix(SOFTMAX) for s in sites if s != softmax_island("")]
                   if i not in names]
        if unknown:
            raise Hw2rtError(f"fp32 islands {unknown}: no such module in {type(net).__name__}")
        # an island inside another island is already fp32
        modules = [m for m in dict.fromkeys(names) if m in modules
                   and not any(m.startswith(o + ".") for o in modules if o != m)]
    inside = tuple(m + "." for m in modules)
    for name, m in net.named_modules():
        if name in modules:  # never round-trip through fp16 (inv_freq would lose digits)
            make_island(m.float(), torch.float16)
            continue
        if name.startswith(inside):
            continue
        for p in m.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.half()
        for k, b in m.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                m._buffers[k] = b.half()
    return Fp16Network(net, modules, sites).eval()
