"""The torch backend compiled ahead of time on the CPU: AOTInductor packages in the hw2rt cache.

`TorchEngine(compile=True)` on the CPU exports its module (`torch.export`, dynamic in the batch) and
compiles it with Inductor's freezing (the weights become constants: BatchNorm and casts folded,
oneDNN's convolutions take prepacked weights), one package per input shape apart from the batch. A
package is built once and cached like an exported graph (engines/cache.py: keyed by everything its
bytes depend on, re-hashed on every load, a bad entry rebuilt), so only the first run pays the
compile (digit UNet: ~30 s on 2 cores); a later process loads it in ~2 s. Inductor's CPU kernels
are generated for the instruction set at hand and with a fixed OpenMP thread count, so both are in
the key. In-process `torch.compile` (options as a dict) stays the CUDA path, where CUDA graphs
capture the compiled module.
"""
import logging

import torch
from torch import nn

from hw2rt.engines.cache import get_or_build
from hw2rt.errors import Hw2rtError, first_line

log = logging.getLogger("hw2rt.compiled")
# the largest batch a package serves (torch.export needs a bound): the digit job's guided calls on
# a GPU are 2,000 rows, the CPU's 500
MAX_BATCH = 4096


def compiled_key_parts(model: str, weights_sha256: str, precision: str, islands: tuple, memory_format: str,
                       shapes: tuple) -> dict:
    """Everything a package's bytes depend on: the weights and how they are cast, the traced shapes,
    torch, the CPU's instruction set and the thread count its kernels were generated for."""
    from hw2rt.device import cpu_flags
    from hw2rt.export.onnx_export import hw2rt_version

    return {"kind": "aoti", "inputs": "layout-canonical", "model": model, "source_sha256": weights_sha256,
            "precision": precision,
            "islands": list(islands), "memory_format": memory_format, "shapes": [list(s) for s in shapes],
            "torch": torch.__version__, "hw2rt": hw2rt_version(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": sorted(f for f, on in cpu_flags().items() if on)}


class CompiledModule:
    """A module's AOTInductor packages, one per non-batch input shape, built or loaded on first use."""

    def __init__(self, module: nn.Module, model: str, *, weights_sha256: str, precision: str, islands: tuple,
                 memory_format: str, cache_dir=None):
        self.module, self.model, self.weights_sha256 = module, model, weights_sha256
        self.precision, self.islands, self.memory_format = precision, islands, memory_format
        self.cache_dir = cache_dir
        # fp32 runs the module as given (NCHW); fp16/bf16 in the engine's activation layout
        self.layout = (torch.channels_last if precision != "fp32" and memory_format == "channels_last"
                       else torch.contiguous_format)
        self.packages = {}  # non-batch shapes -> the loaded package
        self.entries = {}  # non-batch shapes -> its CacheEntry (hit or built: what tests and bench read)

    def __call__(self, *args):
        # a package is compiled for its example's strides: every call is handed that layout
        args = tuple(a.contiguous(memory_format=self.layout) if a.dim() == 4 else a.contiguous()
                     for a in args)
        shapes = tuple(tuple(a.shape[1:]) for a in args)
        if shapes not in self.packages:
            self.packages[shapes] = self._load(args, shapes)
        out = self.packages[shapes](*args)
        return tuple(out) if isinstance(out, (list, tuple)) else out

    def _load(self, args, shapes):
        parts = compiled_key_parts(self.model, self.weights_sha256, self.precision, self.islands,
                                   self.memory_format, shapes)
        label = f"{self.model}-{self.precision}-" + "x".join(map(str, shapes[0]))
        entry = get_or_build("aoti", label, parts, "model.pt2", lambda tmp: self._build(args, tmp),
                             cache_dir=self.cache_dir)
        self.entries[shapes] = entry
        try:
            return torch._inductor.aoti_load_package(str(entry.path))
        except Exception as exc:  # noqa: BLE001 -- a package that hashes right but does not load: another torch's
            raise Hw2rtError(f"{entry.path}: the compiled package does not load ({first_line(exc, 160)}); "
                             "delete it to rebuild") from None

    def _build(self, args, path):
        log.warning("compiling %s %s for inputs %s (once: cached for later runs)", self.model, self.precision,
                    [tuple(a.shape) for a in args])
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        # a batch of 1 would let export specialise the batch axis: trace at 2 or more
        example = tuple(a.expand(max(2, a.shape[0]), *a.shape[1:]).contiguous(
            memory_format=self.layout if a.dim() == 4 else torch.contiguous_format) for a in args)
        with torch.inference_mode(False), torch.no_grad():
            program = torch.export.export(self.module, example, dynamic_shapes=[{0: batch}] * len(example))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs={"freezing": True})
