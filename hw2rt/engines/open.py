"""`open_engine`: the one way to an Engine. The CLI, parity, the demo, bench and the GPU check all
call it, so what parity proves and bench measures is what the commands run.

It resolves the weights (a checkpoint file, a module, an hw2rt ONNX file, or the bundled default),
picks the backend, exports through the cache when the backend needs a graph, and on a CUDA device
puts the engine behind per-bucket CUDA graphs.

Backends:
    torch  eager PyTorch (optionally torch.compile); fp32 and bf16 anywhere, fp16 on CUDA only
           (engines/torch.py: one fp32-island policy per model for fp16 and bf16)
    ort    ONNX Runtime: CPU EP; CUDA (+ TensorRT) EPs with I/O binding under onnxruntime-gpu
    trt    native TensorRT (engines/trt.py): plans built from the exported graph, cached
    openvino  OpenVINO's CPU plugin on the same ONNX graphs (engines/openvino.py): fp32, bf16 (its
           inference precision on the fp32 graph, the fp32 islands kept), int8; compiled models cached
    auto   the fastest measured on this machine's kind (engines/auto.py: CPU rules per instruction set;
           on CUDA trt when present, then ort's CUDA EP, then torch, fp16 by default). The engine's
           `auto_choice` says what was chosen and why; the commands print it.
"""
import json
from pathlib import Path

from hw2rt import options
from hw2rt.device import resolve_device
from hw2rt.engines.auto import choose
from hw2rt.engines.base import Engine
from hw2rt.engines.cache import cache_root
from hw2rt.engines.graphs import GraphedEngine, bucket_sizes
from hw2rt.engines.ort import OrtEngine
from hw2rt.engines.torch import TorchEngine
from hw2rt.engines.weights import cached_onnx, resolve_source
from hw2rt.errors import Hw2rtError
from hw2rt.export import DEFAULT_OPSET
from hw2rt.models import get_spec


def pick_backend(device="cpu", precision: str | None = None, model: str = "digit_unet") -> str:
    """The backend `auto` opens for `model` at `precision` on `device` on this machine (engines/auto.py)."""
    return choose(model, precision, device).backend


def _is_onnx(source) -> bool:
    return isinstance(source, (str, Path)) and Path(source).suffix == ".onnx"


def open_engine(model: str, source=None, *, backend: str = "auto", precision: str | None = None,
                device="cpu", graphs: bool | str = "auto", max_batch: int | None = None,
                threads: int | None = None, cache_dir=None, dims: dict | None = None,
                opset: int = DEFAULT_OPSET, compile: bool | dict = False, calibration_images=None,
                memory_format: str | None = None, defaults: bool = False) -> Engine:
    """An Engine for `model` ("face_unet", "digit_unet", "dann", "digit_classifier").

    source: a checkpoint path (.pt/.pth/.safetensors) or bundled name, an nn.Module of that model,
        an hw2rt ONNX file (.onnx: ort, trt and openvino; its precision is the file's), or None for the
        bundled one.
    precision: "fp32", "fp16" (fp16 graph with fp32 islands; torch: CUDA only), "bf16" (torch;
        openvino on a bf16 CPU, on the fp32 graph), "int8" (ort, trt, openvino: the QDQ graph calibrated on
        the model's own loop, export/int8.py) or
        "fp8" (trt on Hopper/Ada; ort runs its numerics on the CPU, no faster than fp32: export/fp8.py).
        None (the default): fp16 on trt and, with backend "auto", on a CUDA device; an ONNX file's own
        precision; else fp32 (`default_precision`). "auto" (with backend "auto"): the fastest precision
        whose gate the bundled model passed, on this machine (engines/auto.py).
    device: "cpu", "cuda", "cuda:N" or "auto".
    graphs: "auto" (CUDA graphs on a CUDA device, nothing on the CPU), True (always behind the
        bucketing wrapper: CUDA graphs on CUDA, the same padded buckets run eagerly on the CPU) or False.
        ort on CUDA is never captured (its CUDA EP owns its stream): "auto" leaves it unwrapped.
    max_batch: the largest batch of one engine call (default: the model's `ModelSpec.max_batch`
        where graphs or a TensorRT profile need one, else unlimited). Behind graphs it is the top
        bucket (`graph_buckets`: with the jobs' own call batches), and a larger request is split.
    threads: intra-op threads (ORT session option; OpenVINO's INFERENCE_NUM_THREADS; torch: process-wide
        torch.set_num_threads).
    cache_dir: where exported graphs and plans are cached (default $HW2RT_CACHE or ~/.cache/hw2rt).
    dims: sizes of the non-batch axes the engine will mostly serve (face_unet height/width): the
        TensorRT profile. ORT and torch are dynamic in them.
    compile: torch only: True (on the CPU the cached AOTInductor package, engines/compiled.py; on CUDA
        torch.compile) or a dict of torch.compile options.
    memory_format: torch fp16/bf16 only: "channels_last" or "contiguous" (default: the device's,
        engines/torch.py DEFAULT_MEMORY_FORMAT).
    calibration_images: int8/fp8 dann / digit_classifier: a folder of target-domain images to calibrate on.
    defaults: openvino only: OpenVINO's own plugin settings on the fp32 graph (no precision hint: bf16 on a
        bf16 CPU), the peer a user would run; `precision` must be None or fp32 (the graph).
    """
    spec = get_spec(model)
    if backend not in options.BACKENDS:
        raise Hw2rtError(f"unknown backend {backend!r}; choose one of {', '.join(options.BACKENDS)}")
    if precision is not None and precision not in (*options.PRECISIONS, "auto"):
        raise Hw2rtError(f"unknown precision {precision!r}; choose one of {', '.join(options.PRECISIONS)}")
    if graphs not in ("auto", True, False):
        raise Hw2rtError(f"graphs must be 'auto', True or False (got {graphs!r})")
    device = resolve_device(device)
    choice = None
    if backend == "auto":
        choice = choose(spec.name, precision, device, onnx_file=_is_onnx(source))
        backend, precision, compile = choice.backend, choice.precision, compile or choice.compile
    elif precision == "auto":
        raise Hw2rtError("precision auto chooses the backend too: use it with --backend auto")
    elif precision is None:
        precision = default_precision(backend, source)
    if precision == "bf16" and backend not in options.BF16_BACKENDS:
        raise Hw2rtError(f"bf16 runs on {' and '.join(options.BF16_BACKENDS)}, not {backend} (there is no "
                         f"bf16 ONNX graph); use --backend torch or openvino, or fp32/fp16 on {backend}")
    if backend == "openvino" and precision is not None and precision not in options.OPENVINO_PRECISIONS:
        raise Hw2rtError(f"the openvino backend runs {', '.join(options.OPENVINO_PRECISIONS)}, not "
                         f"{precision} (no fast fp16 in its x86 CPU plugin); use --precision bf16 "
                         f"or fp32 on openvino, or --backend ort for the {precision} graph's numerics")
    if precision in options.QUANTIZED and backend == "torch":
        raise Hw2rtError(f"{precision} is a quantized ONNX graph: it runs on the ort (or trt, openvino) "
                         "backend, not torch")
    if defaults and backend != "openvino":
        raise Hw2rtError(f"defaults (OpenVINO's own plugin settings) apply to the openvino backend, not "
                         f"{backend}")
    if compile and backend != "torch":
        raise Hw2rtError(f"torch.compile applies to the torch backend, not {backend}")
    if memory_format is not None and backend != "torch":
        raise Hw2rtError(f"memory_format applies to the torch backend, not {backend}")
    # ONNX Runtime's CUDA EP runs on the stream fixed when its session was made, so torch cannot capture
    # its calls into a graph: ort on CUDA is never captured, and bucketed only when graphs=True asks.
    capture = not (backend == "ort" and device.type == "cuda")
    graphed = device.type == "cuda" and capture if graphs == "auto" else graphs
    call_batch = max_batch or (spec.max_batch if graphed or backend == "trt" else None)

    engine = _open_backend(spec.name, source, backend, precision, device, call_batch, threads, cache_dir,
                           dims, opset, compile, calibration_images, memory_format, defaults)
    engine.auto_choice = choice
    if graphed:
        engine = GraphedEngine(engine, graph_buckets(spec, call_batch), graphs=capture)
        engine.auto_choice = choice
    return engine


def graph_buckets(spec, max_batch: int) -> tuple:
    """The CUDA-graph buckets of `spec`'s engine: powers of two up to `max_batch`, and the jobs' own call
    batches that fit (`ModelSpec.call_batches`: the face job's 10 rows run in a bucket of 10, not 16)."""
    return tuple(sorted(set(bucket_sizes(max_batch)) | {b for b in spec.call_batches if b <= max_batch}))


def default_precision(backend: str, source) -> str | None:
    """What `precision=None` means for a named backend: an ONNX file's own (None); fp16 on trt; else fp32.
    (With backend "auto", engines/auto.py decides: fp16 on a CUDA device.)"""
    if _is_onnx(source):
        return None
    return "fp16" if backend == "trt" else "fp32"


def _open_backend(model, source, backend, precision, device, max_batch, threads, cache_dir, dims, opset,
                  compile, calibration_images, memory_format, defaults=False) -> Engine:
    if backend == "trt":  # a plan of the fp16 (default), fp32 or int8 graph, via the engine cache
        from hw2rt.engines.trt import open_trt_engine
        return open_trt_engine(model, source, precision=precision, device=device, dims=dims,
                               max_batch=max_batch, cache_dir=cache_dir, opset=opset,
                               calibration_images=calibration_images)
    if backend == "openvino":
        return _open_openvino(model, source, precision, device, max_batch, threads, cache_dir, opset,
                              calibration_images, defaults)
    if _is_onnx(source):
        if backend != "ort":
            raise Hw2rtError(f"{source}: an ONNX file runs on the ort backend (or trt, openvino), not "
                             f"{backend}")
        engine = OrtEngine(source, model=model, device=device, threads=threads, max_batch=max_batch,
                           trt_cache_dir=cache_root(cache_dir) / "ort_trt")
        if precision is not None and precision != engine.precision:
            engine.close()
            raise Hw2rtError(f"{source}: is an {engine.precision} graph, but {precision} was asked for")
        return engine
    weights = resolve_source(model, source)
    if backend == "torch":
        return TorchEngine(weights.net, model, precision=precision, device=device, compile=compile,
                           threads=threads, max_batch=max_batch, source=weights.label,
                           memory_format=memory_format, cache_dir=cache_dir)
    entry = cached_onnx(model, weights, precision=precision, opset=opset, cache_dir=cache_dir,
                        calibration_images=calibration_images)
    engine = OrtEngine(entry.path, model=model, device=device, threads=threads, max_batch=max_batch,
                       trt_cache_dir=cache_root(cache_dir) / "ort_trt")
    engine.cache_entry = entry
    return engine


def _open_openvino(model, source, precision, device, max_batch, threads, cache_dir, opset, calibration_images,
                   defaults) -> Engine:
    """OpenVINO on an ONNX file (its own precision, or bf16 on an fp32 one), or on the cached export of the
    weights: the fp32 graph for fp32 and bf16, the int8 graph ort runs (the same calibration) for int8."""
    from hw2rt.engines.openvino import OpenVinoEngine, cpu_only

    cpu_only(device)  # before any export
    if defaults and precision not in (None, "fp32"):
        raise Hw2rtError(f"OpenVINO's defaults run the fp32 graph at the plugin's own precision, not "
                         f"{precision}")
    if _is_onnx(source):
        return OpenVinoEngine(source, model=model, precision=precision, threads=threads, max_batch=max_batch,
                              cache_dir=cache_dir, defaults=defaults)
    weights = resolve_source(model, source)
    entry = cached_onnx(model, weights, precision="int8" if precision == "int8" else "fp32", opset=opset,
                        cache_dir=cache_dir, calibration_images=calibration_images)
    sha = json.loads(entry.manifest.read_text())["sha256"] if entry.manifest.is_file() else None
    engine = OpenVinoEngine(entry.path, model=model, precision=precision, threads=threads,
                            max_batch=max_batch, cache_dir=cache_dir, defaults=defaults, graph_sha256=sha)
    engine.onnx_entry = entry
    return engine
