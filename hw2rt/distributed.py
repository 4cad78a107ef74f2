"""Past one process: hw2rt's jobs under `torchrun` (torch.distributed: gloo on CPUs, NCCL on GPUs).

A launch is detected from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK). Every process takes
a deterministic share of the work: the job's own chunks (the batches a single process would run, in
order), chunk j to rank j % world size. A chunk is computed exactly as in a single process (same
images, same batch), and every image draws from its own generator, so a sharded run writes the files a
single-process run writes, whatever the world size. Rank 0 writes what is global (a CSV, a grid, a
summary) after gathering the rest; every file is still written atomically.

Failure: each rank checks its share's inputs before any work, and `agree` makes every rank learn of a
failure on any rank, so all exit with one line naming the rank and the cause (bad input, or any other
error inside `agreed`/`rank0_first`, e.g. one GPU out of memory: that rank also prints its traceback).
Collective calls time out (TIMEOUT_S) rather than leave a rank waiting forever.
"""
import os
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from hw2rt.errors import Hw2rtError, first_line

TIMEOUT_S = 300


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def chunks(self, n: int, batch_size: int) -> list:
        """This rank's share of `n` items in batches of `batch_size`: [(start, stop)], chunk j of the
        single-process order going to rank j % size."""
        starts = range(0, n, batch_size)
        return [(s, min(s + batch_size, n)) for j, s in enumerate(starts) if j % self.size == self.rank]


def world() -> World:
    """The torchrun launch this process is part of (a world of one outside torchrun)."""
    try:
        return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                     int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as exc:
        raise Hw2rtError(f"torchrun environment: {exc}") from None


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def session(device: str = "cpu"):
    """The process group for a torchrun launch (nothing outside one): gloo, or NCCL when this process
    runs on a GPU (`device_for`: `auto` and `cuda` are cuda:LOCAL_RANK where CUDA is present), with that
    GPU made current, as NCCL's object collectives expect."""
    w = world()
    if w.size == 1 or active():
        yield w
        return
    device = device_for(device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    torch.distributed.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    try:
        yield w
    finally:
        torch.distributed.destroy_process_group()


def device_for(device: str) -> str:
    """`cuda` under torchrun is this process's own GPU, cuda:LOCAL_RANK."""
    w = world()
    return f"cuda:{w.local_rank}" if w.size > 1 and device in ("cuda", "auto") and torch.cuda.is_available() \
        else device


def agree(error: str | None) -> None:
    """Every rank passes its own error (None: fine); if any rank failed, every rank raises one line
    naming the first failed rank and its cause."""
    if not active():
        if error is not None:
            raise Hw2rtError(error)
        return
    errors = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(errors, error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        rank, cause = failed[0]
        raise Hw2rtError(f"rank {rank}: {cause}")


def gather(obj) -> list | None:
    """Rank 0 gets every rank's `obj` in rank order (others get None); a world of one, [obj]."""
    if not active():
        return [obj]
    out = [None] * torch.distributed.get_world_size() if world().main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def gather_dict(part: dict) -> dict | None:
    """Rank 0 gets the union of every rank's `part` (each rank's own keys; others get None)."""
    parts = gather(part)
    return None if parts is None else {k: v for p in parts for k, v in p.items()}


def _attempt(fn):
    try:
        return fn(), None
    except Hw2rtError as exc:
        return None, str(exc)
    except Exception as exc:  # e.g. CUDA out of memory on one rank: every rank must learn of it
        if not active():
            raise
        traceback.print_exc()  # this rank keeps the whole story; every rank gets its one line
        return None, f"{type(exc).__name__}: {first_line(exc)}"


def agreed(fn):
    """`fn()` on every rank; its failure (an Hw2rtError) on any rank is every rank's one-line error
    (`agree`), raised on every rank before any goes on (e.g. to write its share)."""
    result, error = _attempt(fn)
    agree(error)
    return result


def rank0_first(fn):
    """`fn()` on rank 0 first (e.g. filling the export cache), then on the others (from the cache); a
    failure on any rank is every rank's one-line error (`agree`), so no rank waits for a dead one."""
    if not active():
        return fn()
    main = world().main
    result, error = _attempt(fn) if main else (None, None)
    agree(error)
    if not main:
        result, error = _attempt(fn)
    agree(error)
    return result
