"""Data-parallel training under torchrun: every process computes its part of each global step.

What makes W processes train as one process with the same global batch:

- **the step's randomness is drawn for the whole batch** (the batch indices, timesteps, noise, flips,
  shifts) from a data generator seeded alike on every process, and each process keeps its contiguous
  part (`Part.of`); the per-process batch is the global batch / W (it must divide evenly);
- **gradients are averaged** by DistributedDataParallel (one bucketed all-reduce per step), so every
  process applies the same update to the same weights;
- **BatchNorm normalises by the global batch's statistics** (`GlobalBatchNorm`, on CPUs and GPUs alike:
  torch's SyncBatchNorm runs on GPUs only), so a step's loss is the one-process loss within float
  rounding. Only dropout is drawn per process (each from its own generator), a different but equally
  distributed draw;
- rank 0 alone keeps the EMA, evaluates, writes `metrics.jsonl` and the checkpoint, and exports; a
  checkpoint resumes on any world size (it holds the global batch's state, not a process's).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from hw2rt import distributed
from hw2rt.errors import Hw2rtError

_SYNC = {"on": False}


@dataclass(frozen=True)
class Part:
    """This process's part of every global step: its rank of `size`, and the data generator that draws
    a step's randomness for the whole batch (the same stream on every process)."""

    generator: torch.Generator
    rank: int = 0
    size: int = 1

    def of(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of a global batch (dim 0)."""
        if self.size == 1:
            return batch
        if len(batch) % self.size:
            raise Hw2rtError(f"a global batch of {len(batch)} does not split evenly over {self.size} "
                             "processes: choose a --batch-size divisible by the number of processes")
        n = len(batch) // self.size
        return batch[self.rank * n:(self.rank + 1) * n]


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient: every process's output depends on
    every process's input."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        torch.distributed.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        torch.distributed.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1d or 2d) whose training statistics, inside `global_statistics()`, are those of the
    global batch: per-channel sums all-reduced across processes (autograd flows through the reduction,
    as in SyncBatchNorm). Elsewhere (evaluation, AdaBN on rank 0 alone) it is plain BatchNorm."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected a 2D or higher input (got {x.dim()}D)")

    def forward(self, x):
        if not (self.training and _SYNC["on"]):
            return super().forward(x)
        all_reduce = _SumOverProcesses.apply
        if self.momentum is None:
            raise Hw2rtError("GlobalBatchNorm needs a BatchNorm momentum (cumulative averages are not kept)")
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([xf.numel() // xf.shape[1]], dtype=xf.dtype, device=xf.device)
        sums = all_reduce(torch.cat([xf.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / n  # two passes: the rounding of one-process BatchNorm
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                unbiased = var.detach() * n / (n - 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked += 1
        return y.to(x.dtype)


def use_global_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm of `module` replaced in place by a GlobalBatchNorm holding the same parameters and
    buffers (an optimizer made before keeps working; state-dict keys do not change)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            bn = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
            if child.affine:
                bn.weight, bn.bias = child.weight, child.bias
            if child.track_running_stats:
                bn.running_mean, bn.running_var = child.running_mean, child.running_var
                bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            use_global_batchnorm(child)
    return module


@contextlib.contextmanager
def global_statistics():
    """GlobalBatchNorm reduces across processes inside this block (the training step), not elsewhere."""
    _SYNC["on"] = True
    try:
        yield
    finally:
        _SYNC["on"] = False


class _Step(nn.Module):
    """The task's loss as a module, so DistributedDataParallel sees each step's forward and averages
    the gradients of its backward."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, step: int, part: Part):
        return self.loss_fn(step, part)


class Replicas:
    """The training step on W processes (or one: then the plain loss, nothing distributed)."""

    def __init__(self, model: nn.Module, loss_fn, device: torch.device, *, all_parameters_used: bool = True):
        self.world = distributed.world() if distributed.active() else distributed.World()
        self.loss_fn = loss_fn
        self.step_module = None
        if self.world.size > 1:
            use_global_batchnorm(model)
            self.step_module = nn.parallel.DistributedDataParallel(
                _Step(model, loss_fn), device_ids=[device.index] if device.type == "cuda" else None,
                forward_sync_buffers=False, find_unused_parameters=not all_parameters_used)

    @property
    def main(self) -> bool:
        return self.world.main

    def loss(self, step: int, part: Part):
        if self.step_module is None:
            return self.loss_fn(step, part)
        with global_statistics():
            return self.step_module(step, part)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """A scalar averaged over the processes (the global batch's loss)."""
        if self.world.size == 1:
            return value
        value = value.detach().float().clone()
        torch.distributed.all_reduce(value)
        return value / self.world.size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when `flag` is true on any (a Ctrl-C seen by one rank)."""
        if self.world.size == 1:
            return flag
        t = torch.tensor([int(flag)], device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())
