"""The device choice every layer shares: "auto", "cpu", "cuda" or "cuda:N" -> a torch.device.

Whether the device is usable (CUDA present, the backend able to run there) is checked by whoever
uses it, with a message about what it needs."""
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
