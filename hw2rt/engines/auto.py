"""What `--backend auto` (and `--precision auto`) open: the fastest engine measured on this kind of
machine, chosen by recorded rules, the same choice every run (so the same files), said in one line.

CPU kinds, by the instructions that decide which precision is fast (`cpu_kind`, from /proc/cpuinfo):
    amx          AMX tiles for bf16/int8 (Intel Sapphire Rapids and later)
    avx512-bf16  AVX512-BF16 dot products and VNNI, no AMX (AMD Zen 4, Zen 5)
    avx2         AVX2 and FMA only (AMD Zen 3): bf16 is emulated, several times slower than fp32
    other        never measured: ONNX Runtime, as before these rules
CPU_RULES[kind][precision] is the backend measured fastest for that precision on that kind, with its
per-call times on the cpu suite's networks (1 thread; benchmarks/RESULTS.md, "auto's rules"): those
times order the precisions for `--precision auto`, per network (the face UNet's bf16 keeps 67 modules
in fp32, the digit UNet's none: one network's order is not another's). A precision a kind has no rule
for falls back to FALLBACK (ONNX Runtime; bf16, which has no ONNX Runtime path, on torch).

`--precision auto` is the fastest precision whose gate the bundled model of that network passed
(GATES_PASSED: the digit job's task gate, the face job's image MSE 0.3, the classifier's label
agreement; figures in hw2rt/assets/MODEL_CARDS.md). A user's own checkpoint is assumed to behave like
the bundled one: `hw2rt parity` checks it. On a CUDA device both mean what they meant before: TensorRT
when installed, else the CUDA EP, else torch, in fp16 (the fp16 graph passed every gate).
"""
import importlib.util
from dataclasses import dataclass

from hw2rt.device import cpu_flags, resolve_device
from hw2rt.engines.ort import available_providers


@dataclass(frozen=True)
class Rule:
    backend: str
    # per call on that kind, 1 thread, the cpu suite's networks: digit_unet n_feat 128 at batch 20,
    # face_unet base 128 at 64x64, batch 4; dann at batch 512. A network not timed is left out.
    ms: dict
    compile: bool = False  # torch: the AOTInductor package (engines/compiled.py)


# Measured side by side on one machine of each kind (RESULTS.md, "auto's rules": commands and dates).
CPU_RULES = {
    # Intel Xeon, Sapphire Rapids (lscpu family 6 model 143/207), 2026-12-06: torch eager fp32 413-463 ms.
    # (The face UNet's figures there predate its bf16 islands: not used.)
    "amx": {"fp32": Rule("ort", {"digit_unet": 385.0}), "bf16": Rule("openvino", {"digit_unet": 61.5}),
            "int8": Rule("openvino", {"digit_unet": 169.0})},
    # AMD EPYC Zen 4 (family 25 model 17), 2026-12-06.
    "avx512-bf16": {"fp32": Rule("ort", {"digit_unet": 165.0}),
                    "bf16": Rule("openvino", {"digit_unet": 85.4}),
                    "int8": Rule("openvino", {"digit_unet": 71.5})},
    # AMD EPYC Zen 3 (family 25 model 1), 2026-12-02: OpenVINO fp32 ran at 0.86-0.93x ONNX Runtime.
    # torch bf16 (emulated): 7.9 s. int8 on today's graph was never timed on this kind: no rule.
    "avx2": {"fp32": Rule("ort", {"digit_unet": 840.0, "face_unet": 1920.0, "dann": 157.0}),
             "bf16": Rule("torch", {"digit_unet": 7900.0})},
}
FALLBACK = {"fp32": "ort", "fp16": "ort", "int8": "ort", "fp8": "ort", "bf16": "torch"}
KIND_LABELS = {"amx": "AMX", "avx512-bf16": "AVX512-BF16", "avx2": "AVX2 only",
               "other": "a CPU kind never measured"}

# The precisions whose gate each bundled model passed (hw2rt/assets/MODEL_CARDS.md has the figures).
# precision -> the backends that passed it (ANY: every backend that runs it; the numerics are the graph's).
ANY = None
GATES_PASSED = {
    # the task gate at the job's setting (1,000 digits, DDIM 3 steps, eta 1, w 2, graded by the bundled
    # grader): fp32 0.989; int8 0.987 (agreement 0.988, 2026-12-06); torch bf16 0.988 (agreement 0.997,
    # 2026-12-06, Zen 4); openvino bf16 within parity's image budget (0.156)
    "digit_unet": {"fp32": ANY, "int8": ANY, "bf16": ANY},
    # image MSE <= 0.3 on the face job's loop: torch bf16 with its islands 0.236 at parity's default, 0.219
    # (64x64) and 0.221 (256x256) on the job's DDIM 50 (2026-12-06). openvino bf16 with the same islands
    # 1.11: its plugin runs the islands' Linear layers (every ResBlock's timestep projection) in bf16.
    "face_unet": {"fp32": ANY, "bf16": ("torch",)},
    "dann": {"fp32": ANY},
    "digit_classifier": {"fp32": ANY},
}


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: str | None  # None: an ONNX file's own
    compile: bool
    reason: str

    def line(self) -> str:
        """The one line the commands print: `auto: openvino bf16 (AMX)`."""
        what = f"{self.backend}{' compiled' if self.compile else ''} {self.precision or 'the file'}"
        return f"auto: {what} ({self.reason})"


def cpu_kind(flags: dict | None = None) -> str:
    """This CPU's kind (see the module docstring), from its flags (default: /proc/cpuinfo's)."""
    flags = cpu_flags() if flags is None else flags
    if flags.get("amx_bf16") and flags.get("amx_tile"):
        return "amx"
    if flags.get("avx512_bf16"):
        return "avx512-bf16"
    if flags.get("avx2") and not flags.get("avx512f"):
        return "avx2"
    return "other"


def choose(model: str, precision: str | None, device="cpu", *, onnx_file: bool = False,
           kind: str | None = None) -> Choice:
    """What `backend="auto"` opens for `model` at `precision` ("auto": the fastest gated one; None: the
    device's default) on `device`. `kind` overrides the CPU's (tests, and the rules' own table)."""
    if resolve_device(device).type == "cuda":
        return _choose_cuda(precision, onnx_file)
    kind = kind or cpu_kind()
    label = KIND_LABELS[kind]
    if onnx_file:
        backend = "ort" if precision in (None, "fp32", "fp16", "int8", "fp8") else FALLBACK[precision]
        return Choice(backend, precision, False, "an ONNX file")
    rules = CPU_RULES.get(kind, {})
    passed = GATES_PASSED[model]
    if precision == "auto":
        timed = [p for p in passed
                 if model in getattr(rules.get(p), "ms", {}) and _passes(model, p, rules[p])]
        precision = min(timed, key=lambda p: rules[p].ms[model]) if timed else "fp32"
        label += f"; the fastest precision the bundled {model} passed its gate in: {', '.join(passed)}"
    precision = precision or "fp32"
    rule = rules.get(precision)
    if rule is None:
        return Choice(FALLBACK[precision], precision, False, f"{label}: no rule for {precision}")
    if rule.backend == "openvino" and importlib.util.find_spec("openvino") is None:
        return Choice(FALLBACK[precision], precision, False, f"{label}: openvino is not installed")
    if not _passes(model, precision, rule):  # the kind's fastest backend misses this network's gate
        backend = passed[precision][0]
        return Choice(backend, precision, False, f"{label}; {rule.backend} {precision} misses the bundled "
                                                 f"{model}'s gate, {backend} passed it")
    return Choice(rule.backend, precision, rule.compile, label)


def _passes(model: str, precision: str, rule: Rule) -> bool:
    """Whether `rule`'s backend may serve `model` at `precision`: not gated, or gated on any backend, or on
    this one."""
    backends = GATES_PASSED[model].get(precision, ANY)
    return backends is ANY or rule.backend in backends


def _trt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def _choose_cuda(precision, onnx_file) -> Choice:
    if _trt_available():
        backend, why = "trt", "CUDA, TensorRT installed"
    else:
        cuda_ep = "CUDAExecutionProvider" in available_providers()
        backend = "ort" if cuda_ep or onnx_file else "torch"
        why = "CUDA, no TensorRT: " + ("onnxruntime-gpu's CUDA EP" if cuda_ep else "torch behind CUDA graphs")
    if precision == "bf16" and backend != "torch":
        backend, why = "torch", "CUDA: bf16 runs on torch"
    if precision in (None, "auto") and not onnx_file:
        precision = "fp16"
    return Choice(backend, precision, False, why)
