"""The native TensorRT backend: build a plan from the exported ONNX graph (fp32, fp16 with fp32
islands, int8 QDQ with symmetric activations or fp8 E4M3 QDQ: explicit quantization), cache it, run it.

TensorRT 10 and 11 only, strongly typed networks only. TensorRT 11 removed the fp16 builder
flag (and every other weak-typing flag): the precision of each layer is the one the ONNX graph
says, which is why fp16 lives in the graph (export/fp16.py: fp16 interior, fp32 islands, fp32
I/O). On TensorRT 10 the same network is requested with the STRONGLY_TYPED creation flag; on
11 the flag is accepted and ignored, so it is set whenever the binding has it.

Build: one optimization profile over the batch (min 1 / opt / max = the requested max batch;
the face UNet's height and width fixed from `dims`), a timing cache file reused across builds
(in the hw2rt cache folder: a rebuild of a similar graph skips most kernel timing), the
builder optimisation level as an option. The serialized plan goes into the engine cache under
a key that adds the TensorRT version and the GPU (plans are not portable across either).

Run: the TensorRT 10+ tensor API (num_io_tensors / get_tensor_name / get_tensor_mode,
set_input_shape, set_tensor_address, execute_async_v3) on torch-allocated CUDA tensors, on a
non-default CUDA stream (the caller's if it already is on one, e.g. while a CUDA graph is being
captured, else the engine's own), ordered against the caller's stream with events. One execution
context per input shape (per CUDA-graph bucket), all on one user-managed scratch buffer.

`import hw2rt.engines.trt` works without TensorRT and without CUDA: tensorrt is imported on
first use, and a missing or too old TensorRT is one Hw2rtError that says what to do.
"""
from __future__ import annotations

from pathlib import Path

import torch

from hw2rt.engines.base import Engine
from hw2rt.errors import Hw2rtError, first_line
from hw2rt.io import atomic_path
from hw2rt.models import ModelSpec, get_spec
from hw2rt.options import GRAPH_PRECISIONS

MIN_TRT_MAJOR = 10
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default; 4-5 search longer for (rarely) faster kernels
TIMING_CACHE_NAME = "trt-timing.cache"
# The ONNX operators TensorRT's parser imports: the rows marked "Y" in onnx-tensorrt's docs/operators.md for
# TensorRT 10.15 (opsets 9-24, https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md). The
# TensorRT 11.0-11.5 release notes (github.com/NVIDIA/TensorRT/releases) add parser operators (Swish, DFT,
# custom TRT_* ops, opset 25) and remove none, so the 10.x list holds for 11.x. `build_plan` names an
# operator outside it before TensorRT would fail on it; tests/export/test_trt_onnx.py checks every export.
_TRT_ONNX_OPS = """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
    BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
    Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
    ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
    Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
    RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
    Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    TensorScatter ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
"""
TRT_ONNX_OPS = frozenset(_TRT_ONNX_OPS.split())

_INSTALL_HINT = ("install TensorRT 10 or 11 for your CUDA version (e.g. `pip install tensorrt-cu12` or "
                 "`tensorrt-cu13` from NVIDIA's index), or use --backend torch / ort")


def import_tensorrt():
    """The `tensorrt` module, version >= 10; a clear Hw2rtError when it is missing or too old."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise Hw2rtError(f"the trt backend needs TensorRT, which is not installed ({exc}); "
                         f"{_INSTALL_HINT}") from None
    except Exception as exc:  # noqa: BLE001 -- a broken install: missing libnvinfer, CUDA mismatch, ...
        raise Hw2rtError(f"TensorRT is installed but does not load: {first_line(exc, 200)}; "
                         f"{_INSTALL_HINT}") from None
    version = getattr(trt, "__version__", "0")
    if _major(version) < MIN_TRT_MAJOR:
        raise Hw2rtError(f"TensorRT {version} is too old: the trt backend needs TensorRT >= {MIN_TRT_MAJOR} "
                         f"(named I/O tensors, execute_async_v3, strongly typed networks); {_INSTALL_HINT}")
    return trt


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None (never raises)."""
    try:
        return import_tensorrt().__version__
    except Hw2rtError:
        return None


def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def _require_cuda(device) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda":
        raise Hw2rtError(f"the trt backend runs on a CUDA device, not {device}")
    if not torch.cuda.is_available():
        raise Hw2rtError("the trt backend needs a CUDA GPU, and torch sees none")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def compute_capability(device="cuda") -> tuple[int, int]:
    return torch.cuda.get_device_capability(_require_cuda(device))


def gpu_identity(device="cuda") -> str:
    """What a plan is specific to besides TensorRT: GPU name and compute capability."""
    major, minor = compute_capability(device)
    return f"{torch.cuda.get_device_name(_require_cuda(device))} sm_{major}{minor}"


FP8_MIN_CAPABILITY = (8, 9)  # Ada (sm_89) and Hopper (sm_90): the GPUs with FP8 tensor cores


def _check_fp8(device) -> None:
    major, minor = compute_capability(device)
    if (major, minor) < FP8_MIN_CAPABILITY:
        raise Hw2rtError(f"fp8 needs a GPU with FP8 tensor cores (compute capability >= 8.9: Ada, Hopper); "
                         f"this one is sm_{major}{minor}: use --precision int8 or fp16")


def _torch_dtype(trt, dt) -> torch.dtype:
    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}
    for name, torch_dt in table.items():
        if getattr(trt.DataType, name, None) == dt:
            return torch_dt
    raise Hw2rtError(f"TensorRT I/O tensor type {dt} has no torch equivalent")


# --- build ------------------------------------------------------------------------------------------

def profile_shapes(spec: ModelSpec, max_batch: int, opt_batch: int | None = None,
                   dims: dict | None = None) -> dict:
    """{input name: (min, opt, max) shapes}: batch 1 / opt / max, the other named axes from `dims`."""
    if max_batch < 1:
        raise Hw2rtError(f"max batch must be >= 1 (got {max_batch})")
    opt_batch = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt_batch <= max_batch:
        raise Hw2rtError(f"opt batch {opt_batch} must lie in 1..{max_batch}")
    dims = {**spec.default_dims, **(dims or {})}
    out = {}
    for s in spec.inputs:
        shapes = []
        for b in (1, opt_batch, max_batch):
            try:
                shapes.append(s.concrete_shape({**dims, "batch": b}))
            except KeyError as exc:
                raise Hw2rtError(f"{spec.name}: input {s.name!r} needs a size for {exc.args[0]!r}") from None
        out[s.name] = tuple(shapes)
    return out


def _read_timing_cache(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def unsupported_ops(onnx_path) -> list[str]:
    """The operators of an ONNX graph (default domain) outside TRT_ONNX_OPS, sorted."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx")} - TRT_ONNX_OPS)


def build_plan(onnx_path, spec: ModelSpec | str, *, max_batch: int, opt_batch: int | None = None,
               dims: dict | None = None, opt_level: int = DEFAULT_OPT_LEVEL, timing_cache=None,
               workspace_mib: int | None = None, device="cuda", verbose: bool = False) -> bytes:
    """Parse `onnx_path` into a strongly typed network and build a serialized plan (bytes).

    `timing_cache`: a file read before and written after the build (None: no timing cache).
    """
    trt = import_tensorrt()
    device = _require_cuda(device)
    spec = get_spec(spec) if isinstance(spec, str) else spec
    if not 0 <= int(opt_level) <= 5:
        raise Hw2rtError(f"builder optimisation level must be 0..5 (got {opt_level})")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise Hw2rtError(f"{onnx_path}: ONNX file not found")
    shapes = profile_shapes(spec, max_batch, opt_batch, dims)
    unsupported = unsupported_ops(onnx_path)
    if unsupported:
        raise Hw2rtError(f"{onnx_path}: operators TensorRT's ONNX parser does not import: "
                         f"{', '.join(unsupported)}")
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    with torch.cuda.device(device):
        builder = trt.Builder(logger)
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is None and _major(trt.__version__) < 11:
            raise Hw2rtError(f"TensorRT {trt.__version__} has no strongly typed networks; "
                             "need TensorRT >= 10")
        flags = (1 << int(strongly_typed)) if strongly_typed is not None else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise Hw2rtError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errors[:400]}")
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        if sorted(names) != sorted(shapes):
            raise Hw2rtError(f"{onnx_path}: graph inputs {names} differ from the {spec.name} spec "
                             f"{list(shapes)}")

        config = builder.create_builder_config()
        config.builder_optimization_level = int(opt_level)
        if workspace_mib:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
        cache = None
        if timing_cache is not None:
            timing_cache = Path(timing_cache)
            try:
                cache = config.create_timing_cache(_read_timing_cache(timing_cache))
            except Exception:  # noqa: BLE001 -- unreadable, or from another TensorRT: start a new one
                cache = config.create_timing_cache(b"")
            # ignore_mismatch: a cache written on another GPU is skipped, not an error
            config.set_timing_cache(cache, True)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)

        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise Hw2rtError(f"{onnx_path}: TensorRT failed to build an engine (rerun with verbose logging)")
        if timing_cache is not None:
            try:
                with atomic_path(timing_cache) as tmp:
                    tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
            except OSError:
                pass  # the cache only saves time; a read-only folder must not fail a build
    return bytes(memoryview(plan))


# --- run --------------------------------------------------------------------------------------------

class TrtEngine(Engine):
    """A deserialized TensorRT plan behind the Engine interface (torch CUDA tensors in and out)."""

    backend = "trt"

    def __init__(self, plan: bytes, model: str, *, device="cuda", precision: str = "fp16", source: str = ""):
        trt = import_tensorrt()
        device = _require_cuda(device)
        spec = get_spec(model)
        self._trt = trt
        with torch.cuda.device(device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(plan)
            if self._engine is None:
                raise Hw2rtError(f"{source or model}: TensorRT could not load this plan (built by another "
                                 f"TensorRT version or for another GPU?)")
            # Scratch memory for every execution context of this engine (the largest any shape needs).
            self._scratch = torch.empty(max(1, int(self._engine.device_memory_size_v2)), dtype=torch.uint8,
                                        device=device)
            self._contexts = {}  # input shapes -> execution context (`_context_for`)
            self._stream = torch.cuda.Stream(device=device)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._in = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._out = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtype = {n: _torch_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}
        want_in, want_out = [s.name for s in spec.inputs], [s.name for s in spec.outputs]
        if sorted(self._in) != sorted(want_in) or sorted(self._out) != sorted(want_out):
            raise Hw2rtError(f"{source or model}: plan I/O {self._in} -> {self._out} differs from the "
                             f"{model} spec {want_in} -> {want_out}")
        # The profile bounds each call: its max batch is the engine's max_batch.
        self.min_shapes = {s.name: tuple(self._engine.get_tensor_profile_shape(s.name, 0)[0])
                           for s in spec.inputs}
        self.max_shapes = {s.name: tuple(self._engine.get_tensor_profile_shape(s.name, 0)[2])
                           for s in spec.inputs}
        super().__init__(model, spec.inputs, spec.outputs, device=device, precision=precision,
                         max_batch=int(self.max_shapes[spec.inputs[0].name][0]), source=source)

    def _check_profile(self, feeds: dict):
        for name, t in feeds.items():
            lo, hi = self.min_shapes[name], self.max_shapes[name]
            if len(lo) != t.dim() or any(not a <= n <= b for a, n, b in zip(lo, t.shape, hi)):
                raise Hw2rtError(f"{self.name}: input {name!r} of shape {list(t.shape)} is outside the "
                                 f"plan's profile {list(lo)}..{list(hi)}; rebuild with other dims")

    def _run(self, feeds: dict) -> dict:
        self._check_profile(feeds)
        with torch.cuda.device(self.device):  # TensorRT enqueues on the thread's current device
            return self._enqueue(feeds)

    def _context_for(self, shapes: tuple):
        """The execution context for these input shapes, made on first use: one per shape, i.e. one per
        bucket behind CUDA graphs. A graph captured through a context replays that context's shapes,
        addresses and internal buffers, so one context reshaped for the next bucket would break the graphs
        captured before. The contexts share one scratch buffer (user-managed device memory): they run one
        at a time, in stream order (`_enqueue`)."""
        ctx = self._contexts.get(shapes)
        if ctx is None:
            trt = self._trt
            user_managed = trt.ExecutionContextAllocationStrategy.USER_MANAGED  # memory: the shared scratch
            ctx = self._engine.create_execution_context(strategy=user_managed)
            if ctx is None:
                raise Hw2rtError(f"{self.name}: TensorRT could not create an execution context")
            ctx.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
            self._contexts[shapes] = ctx
        return ctx

    def _enqueue(self, feeds: dict) -> dict:
        device = self.device
        caller = torch.cuda.current_stream(device)
        # A plan enqueued on the legacy default stream synchronises with everything; use our own then.
        own = caller.cuda_stream == torch.cuda.default_stream(device).cuda_stream
        stream = self._stream if own else caller
        # the feeds cast for the plan: alive until the enqueue is ordered before the caller's work
        keep = [feeds[name].to(device=device, dtype=self._dtype[name]).contiguous() for name in self._in]
        ctx = self._context_for(tuple(tuple(t.shape) for t in keep))
        for name, t in zip(self._in, keep):
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise Hw2rtError(f"{self.name}: TensorRT refused input shape {list(t.shape)} for {name!r}")
            ctx.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self._out:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise Hw2rtError(f"{self.name}: output {name!r} shape {shape} is not determined by the "
                                 "inputs")
            # Allocated on the caller's stream: that is where the caller will use and free it.
            out = torch.empty(shape, dtype=self._dtype[name], device=device)
            ctx.set_tensor_address(name, out.data_ptr())
            outs[name] = out
        if own:
            stream.wait_stream(caller)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise Hw2rtError(f"{self.name}: TensorRT execution failed")
        if own:
            caller.wait_stream(stream)
        spec_dtypes = {s.name: s.dtype for s in self.outputs}
        return {n: (o if o.dtype == spec_dtypes[n] else o.to(spec_dtypes[n])) for n, o in outs.items()}

    def close(self):
        if self._scratch is not None and self._scratch.is_cuda:
            torch.cuda.synchronize(self.device)  # the scratch goes back to torch: no enqueue may still use it
        self._contexts = {}  # contexts before their engine, the engine before its runtime
        self._engine = self._runtime = self._scratch = None
        super().close()


# --- build + cache ------------------------------------------------------------------------------------

def timing_cache_path(cache_dir=None, device="cuda") -> Path:
    """The timing cache shared by every build on this GPU with this TensorRT."""
    from hw2rt.engines.cache import cache_root

    trt = import_tensorrt()
    slug = "".join(c if c.isalnum() else "-" for c in gpu_identity(device)).strip("-").lower()
    return cache_root(cache_dir) / "trt" / f"timing-trt{trt.__version__}-{slug}.cache"


def trt_key_parts(onnx_sha256: str, model: str, *, precision: str, shapes: dict, opt_level: int,
                  device="cuda") -> dict:
    """Everything a plan's bytes depend on: the graph, the profile, the build options, the
    TensorRT version and the GPU (a plan runs only where it was built)."""
    trt = import_tensorrt()
    return {"kind": "trt", "model": model, "onnx_sha256": onnx_sha256, "precision": precision,
            "profile": {k: [list(s) for s in v] for k, v in sorted(shapes.items())},
            "opt_level": int(opt_level),
            "tensorrt": trt.__version__, "gpu": gpu_identity(device)}


def open_trt_engine(model: str, source=None, *, precision: str | None = None, device="cuda",
                    dims: dict | None = None, max_batch: int | None = None, opt_batch: int | None = None,
                    opt_level: int = DEFAULT_OPT_LEVEL, cache_dir=None, opset: int | None = None,
                    verbose: bool = False, calibration_images=None) -> TrtEngine:
    """A TensorRT engine for `model`, its plan built once and then loaded from the engine cache.

    source: as `open_engine` (checkpoint path, nn.Module, None for the bundled weights), or an
        hw2rt ONNX export (.onnx; its precision is the file's).
    precision: "fp16" (default: the fp16 graph with fp32 islands; what TensorRT is for), "fp32",
        "int8" (the QDQ graph: an explicitly quantized, strongly typed plan; `calibration_images` as
        `open_engine`) or "fp8" (the E4M3 QDQ graph of the same calibration; compute capability >= 8.9).
    dims: the face UNet's height/width for the profile (default: the registry's 64x64).
    max_batch / opt_batch: the profile's batch range 1..max_batch (default `ModelSpec.max_batch`),
        tuned for opt_batch (default: the largest of `ModelSpec.call_batches` that fits, else max_batch).
        `open_engine` puts the result behind CUDA graphs.
    """
    import_tensorrt()  # fail fast, before any export
    device = _require_cuda(device)
    from hw2rt.checkpoints import file_sha256
    from hw2rt.engines.cache import get_or_build
    from hw2rt.engines.weights import cached_onnx, resolve_source
    from hw2rt.export import DEFAULT_OPSET, read_metadata

    spec = get_spec(model)
    if isinstance(source, (str, Path)) and Path(source).suffix == ".onnx":
        onnx_path = Path(source)
        if not onnx_path.is_file():
            raise Hw2rtError(f"{onnx_path}: ONNX file not found")
        meta = read_metadata(onnx_path)
        if meta.get("model") != spec.name:
            raise Hw2rtError(f"{onnx_path}: not an hw2rt export of {spec.name} (found {meta.get('model')!r})")
        if precision is not None and precision != meta.get("precision"):
            raise Hw2rtError(f"{onnx_path}: is an {meta.get('precision')} graph, "
                             f"but {precision} was asked for")
        precision = meta.get("precision", "fp32")
        if precision == "fp8":
            _check_fp8(device)
    else:
        precision = precision or "fp16"
        if precision not in GRAPH_PRECISIONS:
            raise Hw2rtError(f"the trt backend builds {', '.join(GRAPH_PRECISIONS)} graphs, "
                             f"not {precision!r}")
        if precision == "fp8":
            _check_fp8(device)
        # The graph is dynamic in every named axis: trace at the default (cheap) size,
        # fix `dims` in the profile.
        onnx_path = cached_onnx(spec.name, resolve_source(spec.name, source), precision=precision,
                                opset=opset or DEFAULT_OPSET, cache_dir=cache_dir,
                                calibration_images=calibration_images, int8_target="trt").path
    max_batch = int(max_batch or spec.max_batch)
    # tuned for the largest batch a job calls with (the face job's 10 and the interpolation's 11, not 16)
    opt_batch = opt_batch or max((b for b in spec.call_batches if b <= max_batch), default=None)
    shapes = profile_shapes(spec, max_batch, opt_batch, dims)
    parts = trt_key_parts(file_sha256(onnx_path), spec.name, precision=precision, shapes=shapes,
                          opt_level=opt_level, device=device)
    timing = timing_cache_path(cache_dir, device)

    def build(tmp: Path):
        tmp.write_bytes(build_plan(onnx_path, spec, max_batch=max_batch, opt_batch=opt_batch, dims=dims,
                                   opt_level=opt_level, timing_cache=timing, device=device, verbose=verbose))

    entry = get_or_build("trt", f"{spec.name}-{precision}-b{max_batch}", parts, "model.plan", build,
                         cache_dir=cache_dir)
    engine = TrtEngine(entry.path.read_bytes(), spec.name, device=device, precision=precision,
                       source=str(entry.path))
    engine.cache_entry = entry
    return engine
