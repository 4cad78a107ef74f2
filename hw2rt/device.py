"""The device choice every layer shares: "auto", "cpu", "cuda" or "cuda:N" -> a torch.device.

`resolve_device` only parses (a backend that needs more than CUDA, such as TensorRT, says what it
needs first); `usable_device` also refuses CUDA where there is none."""
import platform
import re
from pathlib import Path

import torch

from hw2rt.errors import Hw2rtError


def resolve_device(device="auto") -> torch.device:
    """`auto` is cuda when torch sees a GPU, else cpu; anything torch cannot parse is a one-line error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise Hw2rtError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise Hw2rtError(f"device {device!r}: hw2rt runs on cpu or cuda")
    return dev


def usable_device(device="auto") -> torch.device:
    """`resolve_device`, refused in one line when it names CUDA on a machine without it: for the code
    that runs torch on the device itself (the torch backend, training, evaluation)."""
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Hw2rtError(f"device {device}: CUDA is not available on this machine (torch sees no GPU)")
    return dev


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> dict:
    """The vector extensions that decide which precision is fast on this CPU (and so `cpu_kind`)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:(.*)$", text, re.MULTILINE).group(1).split())
    except (OSError, AttributeError):
        flags = set()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
    return {f: f in flags for f in wanted}
