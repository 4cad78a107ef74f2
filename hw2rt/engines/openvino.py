"""The OpenVINO backend: hw2rt's own ONNX exports on OpenVINO's CPU plugin, fp32, bf16 and int8.

Rules:
- The CPU only (OpenVINO's GPU plugin is Intel graphics, not CUDA). The graph is hw2rt's export, read as
  OrtEngine reads it: the hw2rt metadata names the model, and the graph's I/O must be that spec's.
- The precision is asked for, never left to the plugin: OpenVINO's CPU default on a bf16-capable CPU is
  bf16, so fp32 sets INFERENCE_PRECISION_HINT f32, bf16 sets bf16. bf16 runs on the fp32 graph and only where
  the CPU has bf16 hardware (OPTIMIZATION_CAPABILITIES lists BF16: AVX512-BF16 or AMX); elsewhere OpenVINO
  would run fp32 under the bf16 name, so it is refused. int8 is the QDQ graph the ort backend runs (the same
  calibration, export/int8.py), its unquantized nodes in f32. fp16 and fp8 graphs are refused: the CPU
  plugin has no fast fp16 on x86 (on AVX512-FP16, Sapphire Rapids, its f16 ran the face UNet at 0.8x torch
  fp32, RESULTS.md), and `ort` runs those graphs' numerics.
- bf16 keeps hw2rt's fp32 islands (`engines/torch.fp32_islands`) with OpenVINO's own mark: what is marked,
  and how, is `engines/openvino_islands.py`.
- One stream, the latency hint, INFERENCE_NUM_THREADS = threads when given. The compiled model is cached
  under `<cache>/openvino` (cache.py: keyed by the graph's SHA-256, precision, islands, the settings,
  OpenVINO's version, the CPU and oneDNN's instruction-set ceiling, ONEDNN_MAX_CPU_ISA; the blob is
  re-hashed on every load, so a stale or corrupt one is rebuilt, never imported: OpenVINO imports a
  corrupted blob without complaint).
- `defaults=True`: OpenVINO as a user would run it, the plugin's own settings on hw2rt's fp32 graph (no
  precision hint: bf16 on a bf16 CPU; threads still honoured). A peer to compare against, not an hw2rt
  path: the engine's precision is what the plugin chose.
"""
import logging
import os
from pathlib import Path

import numpy as np
import torch

from hw2rt.engines.base import Engine, check_graph_io, graph_spec, output_shapes
from hw2rt.engines.cache import get_or_build
from hw2rt.engines.openvino_islands import KEEP_FP32, REWRITES, mark_islands
from hw2rt.errors import Hw2rtError
from hw2rt.export import META_PREFIX

log = logging.getLogger("hw2rt.openvino")
PRECISIONS = ("fp32", "bf16", "int8")  # what this backend serves
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the QDQ graph's unquantized nodes in f32
_TYPES = {"f32": torch.float32, "f16": torch.float16, "i64": torch.int64, "i32": torch.int32}
# oneDNN's instruction-set ceiling, which the plugin's kernels honour (AMX off under AVX512_CORE_BF16) and
# its OPTIMIZATION_CAPABILITIES do not show: part of a compiled model's cache key
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def _ov():
    try:
        import openvino
    except ImportError:
        raise Hw2rtError("the openvino backend needs the openvino package (pip install openvino)") from None
    return openvino


def _why(exc: BaseException) -> str:
    """OpenVINO's message without its 'Exception from src/...' frames: the line that says what failed."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    said = [ln for ln in lines if not ln.startswith("Exception from ")]
    return ((said or lines or [type(exc).__name__])[-1])[:240]


def core():
    """The process's OpenVINO Core (one: it holds the plugins)."""
    global _CORE
    if _CORE is None:
        _CORE = _ov().Core()
    return _CORE


_CORE = None


def cpu_capabilities() -> list:
    return list(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin has bf16 hardware here (AVX512-BF16 or AMX-BF16)."""
    return "BF16" in cpu_capabilities()


def cpu_only(device) -> torch.device:
    """`device` if it is the CPU, else the backend's one-line refusal."""
    device = torch.device(device)
    if device.type != "cpu":
        raise Hw2rtError(f"the openvino backend runs on the CPU only, not {device.type}; use --device cpu, "
                         "or --backend trt/ort on a CUDA GPU")
    return device


def compile_config(precision: str, threads: int | None, defaults: bool = False) -> dict:
    """The CPU plugin's properties for `precision` (`defaults`: only the threads)."""
    config = {} if defaults else {"INFERENCE_PRECISION_HINT": HINTS[precision], "PERFORMANCE_HINT": "LATENCY",
                                  "NUM_STREAMS": 1}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _meta(model) -> dict:
    """The hw2rt metadata OpenVINO's ONNX reader keeps in the model's rt_info["framework"]."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    return {k.removeprefix(META_PREFIX): model.get_rt_info(["framework", k]).astype(str)
            for k in info["framework"] if k.startswith(META_PREFIX)}


def _signature(ports) -> list:
    return [(p.get_any_name(), _TYPES.get(p.get_element_type().get_type_name()),
             p.get_partial_shape().rank.get_length()) for p in ports]


class OpenVinoEngine(Engine):
    backend = "openvino"

    def __init__(self, path, *, model: str | None = None, precision: str | None = None, device: str = "cpu",
                 threads: int | None = None, max_batch: int | None = None, cache_dir=None,
                 defaults: bool = False, graph_sha256: str | None = None):
        """path: an hw2rt ONNX export. precision: fp32 or bf16 on an fp32 graph, int8 on the int8 graph; None:
        the graph's own. graph_sha256: the graph file's, when known (the export cache's manifest)."""
        path, device = Path(path), cpu_only(device)
        if not path.is_file():
            raise Hw2rtError(f"{path}: ONNX file not found")
        try:
            graph = core().read_model(str(path))
        except Exception as exc:  # noqa: BLE001 -- OpenVINO raises RuntimeError for every reader failure
            raise Hw2rtError(f"{path}: not a loadable ONNX model (truncated or corrupt?): "
                             f"{_why(exc)}") from None
        meta = _meta(graph)
        spec = graph_spec(path, meta, model)
        check_graph_io(path, spec, _signature(graph.inputs), _signature(graph.outputs))
        stored = meta.get("precision", "fp32")
        precision = precision or stored
        if stored not in ("fp32", "int8"):
            raise Hw2rtError(f"{path}: is an {stored} graph; the openvino backend runs the fp32 graph (fp32 "
                             f"or bf16) and the int8 one: use --backend ort for {stored} on the CPU")
        if precision not in PRECISIONS or (precision == "int8") != (stored == "int8"):
            raise Hw2rtError(f"{path}: is an {stored} graph, but {precision} was asked for "
                             f"(openvino runs {'int8' if stored == 'int8' else 'fp32 or bf16'} on it)")
        if defaults and stored != "fp32":
            raise Hw2rtError(f"{path}: OpenVINO's defaults run the fp32 graph, not an {stored} one")
        if precision == "bf16" and not has_bf16():
            raise Hw2rtError("bf16 on openvino needs a CPU with bf16 hardware (AVX512-BF16 or AMX); this "
                             f"one has {', '.join(cpu_capabilities())}, and OpenVINO would run fp32 instead: "
                             "use fp32")
        from hw2rt.engines.torch import fp32_islands

        self.islands = () if defaults else fp32_islands(spec.name, precision)
        self.config = compile_config(precision, threads, defaults)
        self.compiled, self.cache_entry = self._compile(graph, path, spec.name, precision, defaults,
                                                        cache_dir, graph_sha256)
        if defaults:  # what the plugin chose
            bf16 = self.compiled.get_property("INFERENCE_PRECISION_HINT") == _ov().Type.bf16
            precision = "bf16" if bf16 else "fp32"
        super().__init__(spec.name, spec.inputs, spec.outputs, device=device, precision=precision,
                         max_batch=max_batch, source=str(path))
        self.path = path
        self.metadata = meta
        self.defaults = defaults
        self.request = self.compiled.create_infer_request()

    def _compile(self, graph, path: Path, model: str, precision: str, defaults: bool, cache_dir,
                 graph_sha256):
        """(the compiled model, its cache entry): imported from the hw2rt cache, or compiled and stored."""
        import tempfile

        from hw2rt.checkpoints import file_sha256

        ov = _ov()
        parts = {"kind": "openvino", "model": model, "graph_sha256": graph_sha256 or file_sha256(path),
                 "precision": "default" if defaults else precision, "islands": list(self.islands),
                 "mark": {**KEEP_FP32, "rewrites": list(REWRITES)} if self.islands else None,
                 "config": {k: v for k, v in self.config.items() if k != "INFERENCE_NUM_THREADS"},
                 "openvino": ov.get_version(), "cpu": cpu_capabilities(),
                 "cpu_name": core().get_property("CPU", "FULL_DEVICE_NAME"),
                 "isa_limit": {k: os.environ[k] for k in ISA_LIMITS if k in os.environ}}
        made = {}

        def build(tmp: Path):
            with tempfile.TemporaryDirectory(prefix="hw2rt-openvino-") as work:
                marked, n = mark_islands(graph, model, self.islands, Path(work), core())
                if self.islands and not n:
                    raise Hw2rtError(f"{path}: no node of the fp32 islands {', '.join(self.islands)} in "
                                     "the graph")
                made["compiled"] = self._checked(lambda: core().compile_model(marked, "CPU", self.config),
                                                 path)
            tmp.write_bytes(made["compiled"].export_model().getvalue())

        label = f"{model}-{'default' if defaults else precision}"
        entry = get_or_build("openvino", label, parts, "model.blob", build, cache_dir=cache_dir)
        if "compiled" not in made:
            try:
                return core().import_model(entry.path.read_bytes(), "CPU", self.config), entry
            except Exception as exc:  # noqa: BLE001 -- sound bytes OpenVINO will not import: rebuild them
                log.warning("cache entry %s does not import (%s): rebuilding", entry.path.parent, _why(exc))
                entry.manifest.unlink(missing_ok=True)
                entry = get_or_build("openvino", label, parts, "model.blob", build, cache_dir=cache_dir)
        return made["compiled"], entry

    @staticmethod
    def _checked(fn, where):
        try:
            return fn()
        except Hw2rtError:
            raise
        except Exception as exc:  # noqa: BLE001 -- OpenVINO raises RuntimeError for everything
            raise Hw2rtError(f"{where}: OpenVINO could not compile it: {_why(exc)}") from None

    def describe(self) -> dict:
        hint = "plugin default" if self.defaults else self.config["INFERENCE_PRECISION_HINT"]
        return {**super().describe(), "islands": list(self.islands), "inference_precision": hint,
                "threads": self.config.get("INFERENCE_NUM_THREADS")}

    def _run(self, feeds: dict) -> dict:
        arrays = {k: v.detach().contiguous().numpy() for k, v in feeds.items()}
        try:
            self.request.infer(arrays)
        except Exception as exc:  # noqa: BLE001 -- OpenVINO raises RuntimeError for everything
            raise Hw2rtError(f"{self.name}: OpenVINO failed: {_why(exc)}") from None
        out = {s.name: torch.from_numpy(np.array(self.request.get_tensor(s.name).data)).to(s.dtype)
               for s in self.outputs}
        # a plugin that loses a shape (it has: see _promoted) must not hand on a wrong-sized result
        for name, shape in output_shapes(self.inputs, self.outputs, feeds).items():
            if tuple(out[name].shape) != tuple(shape):
                raise Hw2rtError(f"{self.name}: OpenVINO returned {name} of shape {tuple(out[name].shape)}, "
                                 f"expected {tuple(shape)} (a plugin error)")
        return out

    def close(self):
        self.request = self.compiled = None
        super().close()
