"""The runner vocabulary of every suite (cpu, quick, gpu, cpu-smoke): a name -> `open_engine` settings.

Torch-free at import (the CLI lists the names in `--help`); `open_runner` is the one way a suite
opens an engine, and it is `open_engine` with the runner's settings, nothing else. "+graphs" runners
sit behind the bucketing wrapper: CUDA graphs on a GPU, the same padded buckets run eagerly on a CPU.
"""
from hw2rt.errors import Hw2rtError

RUNNERS = {
    "torch": {"backend": "torch", "precision": "fp32", "label": "torch eager fp32 (reference)"},
    # compile True: on the CPU the cached AOTInductor package (engines/compiled.py), dynamic in the batch
    "compile": {"backend": "torch", "precision": "fp32", "compile": True,
                "label": "torch compiled fp32 (AOTInductor on the CPU, cached)"},
    "bf16": {"backend": "torch", "precision": "bf16",
             "label": "torch bf16 (fp32 islands, the device's layout: channels-last on CPU, NCHW on CUDA)"},
    "bf16-compiled": {"backend": "torch", "precision": "bf16", "compile": True,
                      "label": "torch bf16 compiled (AOTInductor with freezing, cached)"},
    "fp16": {"backend": "torch", "precision": "fp16", "label": "torch fp16 (fp32 islands, NCHW on CUDA)"},
    "ort": {"backend": "ort", "precision": "fp32", "label": "ONNX Runtime fp32"},
    "ort-fp16": {"backend": "ort", "precision": "fp16", "label": "ONNX Runtime fp16 graph"},
    "ort-int8": {"backend": "ort", "precision": "int8",
                 "label": "ONNX Runtime int8 (QDQ, calibrated on the loop)"},
    "trt": {"backend": "trt", "precision": "fp16", "label": "TensorRT fp16"},
    "openvino": {"backend": "openvino", "precision": "fp32",
                 "label": "OpenVINO fp32 (f32 inference precision)"},
    "openvino-bf16": {"backend": "openvino", "precision": "bf16",
                      "label": "OpenVINO bf16 (the fp32 graph, fp32 islands kept)"},
    "openvino-int8": {"backend": "openvino", "precision": "int8",
                      "label": "OpenVINO int8 (ort's QDQ graph and calibration)"},
    # the peer a user would pick, not an hw2rt path: OpenVINO's own plugin settings on the fp32 graph (no
    # precision hint: bf16 on a bf16 CPU, no islands); its precision is what the plugin chose
    "openvino-default": {"backend": "openvino", "precision": "fp32", "defaults": True,
                         "label": "peer: OpenVINO, default settings, fp32 graph (not an hw2rt path)"},
    "torch+graphs": {"backend": "torch", "precision": "fp32", "graphs": True,
                     "label": "torch fp32, CUDA graphs"},
    "bf16+graphs": {"backend": "torch", "precision": "bf16", "graphs": True,
                    "label": "torch bf16, CUDA graphs"},
    "fp16+graphs": {"backend": "torch", "precision": "fp16", "graphs": True,
                    "label": "torch fp16, NCHW, CUDA graphs"},
    # the other activation layout than the device's default (engines/torch.py DEFAULT_MEMORY_FORMAT)
    "fp16-cl+graphs": {"backend": "torch", "precision": "fp16", "graphs": True,
                       "memory_format": "channels_last", "label": "torch fp16, channels-last, CUDA graphs"},
    "bf16-nchw+graphs": {"backend": "torch", "precision": "bf16", "graphs": True,
                         "memory_format": "contiguous", "label": "torch bf16, NCHW, CUDA graphs"},
    "fp16-compile+graphs": {"backend": "torch", "precision": "fp16", "graphs": True,
                            "compile": {"dynamic": False}, "label": "torch.compile fp16, CUDA graphs"},
    "ort-fp16+graphs": {"backend": "ort", "precision": "fp16", "graphs": True,
                        "label": "ONNX Runtime fp16 graph, CUDA graphs"},
    "trt+graphs": {"backend": "trt", "precision": "fp16", "graphs": True,
                   "label": "TensorRT fp16, CUDA graphs"},
    # what a user gets from `--backend auto --precision fp16` on this install (graphs as open_engine
    # decides): the gpu suite's headline rows; the row's label names what it opened
    "auto": {"backend": "auto", "precision": "fp16", "graphs": "auto",
             "label": "--backend auto --precision fp16"},
}
REFERENCE = "torch"  # every ratio and parity figure is against torch eager fp32
# what a user would run instead of hw2rt: measured beside its runners, never chosen as a goal's fastest
PEERS = ("openvino-default",)
# the external baseline of the loops: the plain module driven by diffusers' DDIMScheduler
DIFFUSERS = "diffusers"


def is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def unavailable(name: str, device) -> str | None:
    """Why runner `name` cannot run on `device` with this install (None: it can)."""
    import importlib.util

    r = {**RUNNERS[name], "backend": backend_of(name, device)}
    cuda = is_cuda(device)
    if r["backend"] == "trt":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (the trt backend needs TensorRT >= 10 and a CUDA GPU)"
        if not cuda:
            return "TensorRT needs a CUDA GPU"
    if r["backend"] == "torch" and r["precision"] == "fp16" and not cuda:
        return "torch fp16 runs on CUDA only"
    if r["backend"] == "openvino":
        if cuda:
            return "OpenVINO runs on the CPU here (its GPU plugin is Intel graphics)"
        if importlib.util.find_spec("openvino") is None:
            return "openvino is not installed"
        from hw2rt.engines.openvino import has_bf16

        if r["precision"] == "bf16" and not has_bf16():
            return "this CPU has no bf16 hardware (AVX512-BF16/AMX): OpenVINO would run fp32"
    if r["backend"] == "ort" and cuda:
        from hw2rt.engines.ort import available_providers

        if "CUDAExecutionProvider" not in available_providers():
            return "onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu is not installed)"
    return None


def backend_of(name: str, device) -> str:
    """The backend runner `name` opens on `device` (`auto` resolved as open_engine resolves it)."""
    r = RUNNERS[name]
    if r["backend"] != "auto":
        return r["backend"]
    from hw2rt.engines.open import pick_backend

    return pick_backend(device, r["precision"])


def compute_precision(name: str, device) -> str:
    """The precision the arithmetic runs in, whose peak the runner is measured against."""
    r = RUNNERS[name]
    if backend_of(name, device) == "ort" and r["precision"] == "fp16" and not is_cuda(device):
        return "fp32"  # the CPU EP casts fp16 nodes it has no kernel for to fp32 (engines/ort.py)
    if r.get("defaults"):  # the plugin's choice: bf16 where the CPU has it
        from hw2rt.engines.openvino import has_bf16

        return "bf16" if has_bf16() else "fp32"
    return r["precision"]


def graded_precision(name: str, device) -> str:
    """The precision whose parity budget grades runner `name`: its own, or for a runner at OpenVINO's
    defaults, the precision the plugin computes in."""
    r = RUNNERS[name]
    return compute_precision(name, device) if r.get("defaults") else r["precision"]


def open_runner(name: str, model: str, net, *, device, threads: int | None = None, cache_dir=None,
                dims: dict | None = None):
    """Runner `name` on `net`: `open_engine` with the runner's settings, nothing else."""
    from hw2rt.engines import open_engine

    if name not in RUNNERS:
        raise Hw2rtError(f"unknown runner {name!r}; choose from {', '.join(RUNNERS)}")
    r = RUNNERS[name]
    return open_engine(model, net, backend=r["backend"], precision=r["precision"], device=device,
                       graphs=r.get("graphs", False), threads=threads, compile=r.get("compile", False),
                       cache_dir=cache_dir, dims=dims or None, memory_format=r.get("memory_format"),
                       defaults=r.get("defaults", False))
