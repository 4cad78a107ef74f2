"""A classifier's predictions and accuracy on a uint8 image batch: what the trainers' validation
and the assignment's grading (evaluate.py) both compute, in one place below both."""
import torch
from torch import nn


def _first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def predict(module: nn.Module, images_u8: torch.Tensor, *, batch_size: int = 1024,
            device=None) -> torch.Tensor:
    """Class predictions (int64 [N], on the CPU) of a classifier for uint8 [N,3,H,W] images.

    The module gets RGB in [0,1]; its first output (logits or log-probabilities) is arg-maxed.
    """
    if device is None:
        device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    preds = []
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i:i + batch_size].to(device).float().div_(255.0)
        preds.append(_first_output(module(x)).argmax(1).cpu())
    module.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64)


def dataset_accuracy(module: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, *,
                     batch_size: int = 1024) -> float:
    preds = predict(module, images_u8, batch_size=batch_size)
    return float((preds == labels.cpu()).float().mean().item())
