"""The loop every trainer shares: seeding, precision, progress, metrics, checkpoints, resume, Ctrl-C.

A trainer describes one run as a `Task` (model, optimizer, a per-step loss, optional epoch-end
evaluation) and hands it to `fit`, which owns everything around the step:

- `<out>/checkpoint.pt`: the resumable state, a `torch.save`d dict of tensors and plain
  containers only, so `torch.load(path, weights_only=True)` opens it (format below).
  Written atomically at every epoch end, every `save_every` steps, on Ctrl-C and at the end.
- `<out>/metrics.jsonl`: one JSON object a line: training lines (step, epoch, loss, lr,
  img_per_s, ...) every `log_every` steps, and `"event": "eval"` lines at epoch ends.
- `<out>/summary.json`: the dict `fit` returns.
- the exported model (hw2rt safetensors), written by the task's `export`.

Checkpoint format (`"format": "hw2rt-train-1"`)::

    {"format", "kind", "config": {...}, "step": int, "epoch": int, "elapsed_s": float,
     "model": state_dict, "optimizer": state_dict, "scaler": dict, "scheduler": dict | None,
     "ema": state_dict | None, "best": {"metric", "key", "value", "epoch", "step", "model"} | None,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}}

Ctrl-C does not tear a step in half: the first one asks the loop to stop after the current
step, save the checkpoint and raise KeyboardInterrupt; a second one aborts at once.

Under torchrun every process computes its part of each global step (hw2rt.training.data_parallel):
rank 0 alone keeps the EMA, evaluates, logs and saves; a Ctrl-C (or torchrun's SIGTERM) on any rank
stops every rank after the same step, with one checkpoint. The checkpoint's "rng" also holds "data",
the generator of the steps' batch randomness (the same on every process).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from hw2rt.device import usable_device
from hw2rt.errors import Hw2rtError, first_line
from hw2rt.io import atomic_path
from hw2rt.training.data_parallel import Part, Replicas

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FORMAT = "hw2rt-train-1"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


# ---------------------------------------------------------------------------------- device, precision, seed


def pick_precision(precision: str, device: torch.device) -> str:
    """auto = fp16 autocast + GradScaler on CUDA (the seed's recipe), fp32 on CPU.

    bf16 autocast is accepted on a CPU but is not a speed-up for *training* with torch 2.13's CPU
    build: its backward falls back to `_slow_conv2d` (measured 10x slower than fp32 on the
    DigitUNet), unlike bf16 inference. Keep fp32 for CPU training.
    """
    if precision not in PRECISIONS:
        raise Hw2rtError(f"--precision {precision}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise Hw2rtError("--precision fp16 needs CUDA (on a CPU use bf16 or fp32)")
    return precision


def seed_everything(seed: int):
    """Seed torch's global generator: call before building the model (its init draws from it)."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise Hw2rtError(f"--seed {seed!r}: must be a non-negative integer")
    torch.manual_seed(int(seed))


def start_run(device: str, precision: str, seed: int) -> tuple[torch.device, str]:
    """Every trainer's first step: the device (usable here: training runs on it) and training
    precision to use (pick_precision), and torch's global generator seeded (seed_everything)
    before any model exists."""
    dev = usable_device(device)
    prec = pick_precision(precision, dev)
    seed_everything(seed)
    return dev, prec


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------- EMA


class EMA:
    """An exponential moving average of a model's parameters (buffers are copied).

    The decay warms up as min(decay, (1+step)/(10+step)) so short runs are not dominated
    by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise Hw2rtError(f"--ema-decay {decay}: must be between 0 and 1 (exclusive)")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)


# ---------------------------------------------------------------------------------- interrupts


class _StopFlag:
    requested = False


@contextlib.contextmanager
def graceful_interrupt(terminate: bool = False):
    """The first SIGINT sets `.requested` (the loop stops cleanly); a second one raises at once.
    With `terminate` (under torchrun, whose Ctrl-C reaches the workers as SIGTERM, SIGKILL 30 s later)
    SIGTERM sets it too, and never aborts."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signals are only delivered to the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if flag.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, previous[signal.SIGINT])
            raise KeyboardInterrupt
        if not flag.requested:
            tqdm.write("interrupt: saving a checkpoint after this step "
                       "(Ctrl-C again to abort without saving)")
        flag.requested = True

    signal.signal(signal.SIGINT, handler)
    if terminate:
        signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------------------------- checkpoints


def save_state(path, state: dict):
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path) -> dict:
    """A resumable checkpoint, opened with weights_only=True; Hw2rtError naming the file on failure."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises many types for truncated/corrupt/unsafe files
        raise Hw2rtError(f"{path}: not a readable training checkpoint: {first_line(exc, 160)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise Hw2rtError(f"{path}: not an hw2rt training checkpoint (format {FORMAT})")
    return state


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------- the task


@dataclass
class Task:
    """One training run, as the loop sees it.

    loss_fn(step, part) -> (loss, extras): the loss of global step `step` (0-based) over this process's
    part of its batch, computed under autocast: the step's randomness is drawn for the whole batch
    from `part.generator`, then `part.of(...)` keeps this process's share (all of it in one process).
    extras are scalars (floats or 0-d tensors) logged with the loss.
    evaluate(module) -> dict of floats, run at every epoch end on the module that would be
    exported (the EMA when enabled); `best_key` (maximised) selects what gets exported.
    export(module, summary) -> dict of written paths, run once at the end.
    """

    kind: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[int, Part], tuple[torch.Tensor, dict]]
    total_steps: int
    steps_per_epoch: int
    batch_size: int
    config: dict
    export: Callable[[nn.Module, dict], dict]
    resume_keys: tuple = ()
    lr_at: Callable[[int], float] | None = None
    scheduler: object | None = None
    evaluate: Callable[[nn.Module], dict] | None = None
    best_key: str | None = None
    ema_decay: float | None = None
    grad_clip: float | None = None
    all_parameters_used: bool = True  # False: some get no gradient in a step (DDP must look for them)
    summary_extra: dict = field(default_factory=dict)


def _scalar(v) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


def _check_resume(path, state: dict, task: Task):
    if state.get("kind") != task.kind:
        raise Hw2rtError(f"{path}: a {state.get('kind')} checkpoint cannot resume {task.kind} training")
    for key in ("model", *task.resume_keys):
        old, new = state["config"].get(key), task.config.get(key)
        if old != new:
            raise Hw2rtError(f"{path}: was trained with {key}={old}, this run asks for {key}={new} "
                             "(resume with the same settings, or start over in another folder)")


def fit(
    task: Task,
    out_dir,
    *,
    device: torch.device,
    precision: str,
    seed: int,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log_every: int = 50,
    save_every: int = 1000,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train `task` to `task.total_steps` steps; returns the summary dict (also in summary.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, metrics_path = out / CHECKPOINT, out / METRICS
    if ckpt.exists() and not (resume or overwrite):
        raise Hw2rtError(f"{ckpt}: a training run exists here: resume it, or pass overwrite to start over")
    if task.total_steps < 1:
        raise Hw2rtError(f"{task.kind}: nothing to train (0 steps); give more steps/epochs or more data")

    # The trainer seeded torch before building the model (see `seed_everything`); seeding again
    # here keeps the step randomness independent of how many draws the model's init made. The global
    # generator draws dropout (per process); the data generator a step's batch randomness (shared).
    model = task.model.to(device)
    replicas = Replicas(model, task.loss_fn, device, all_parameters_used=task.all_parameters_used)
    world, main = replicas.world, replicas.main
    if task.batch_size % world.size:
        raise Hw2rtError(f"--batch-size {task.batch_size}: the global batch must split evenly over the "
                         f"{world.size} processes")
    torch.manual_seed(_dropout_seed(seed, world.rank, 0))
    data_rng = torch.Generator(device=device).manual_seed(DATA_SEED + seed)
    part = Part(data_rng, world.rank, world.size)
    ema = EMA(model, task.ema_decay) if task.ema_decay and main else None
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    step, elapsed0, best, resumed_from, last_loss = 0, 0.0, None, None, math.nan

    if resume and ckpt.exists():
        state = load_state(ckpt)
        _check_resume(ckpt, state, task)
        model.load_state_dict(state["model"])
        task.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        if task.scheduler is not None and state.get("scheduler"):
            task.scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"] if state.get("ema") else state["model"])
        best = state.get("best")
        step, elapsed0, resumed_from = int(state["step"]), float(state["elapsed_s"]), int(state["step"])
        data_rng.set_state(state["rng"]["data"])
        if world.size == 1 and state.get("world_size", 1) == 1:  # one process resumes exactly
            torch.set_rng_state(state["rng"]["torch"])
            if device.type == "cuda" and len(state["rng"]["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        else:  # dropout: each process's own stream, from here
            torch.manual_seed(_dropout_seed(seed, world.rank, step))
        last_loss = float(state.get("last_loss", math.nan))
    elif resume and main:
        tqdm.write(f"{ckpt}: no checkpoint to resume, starting a new run")

    def export_module() -> nn.Module:
        return ema.module if ema is not None else model

    def state_dict_now() -> dict:
        return {
            "format": FORMAT, "kind": task.kind, "config": task.config,
            "step": step, "epoch": step // task.steps_per_epoch,
            "elapsed_s": elapsed0 + (time.perf_counter() - t0), "last_loss": last_loss,
            "model": model.state_dict(), "optimizer": task.optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "scheduler": task.scheduler.state_dict() if task.scheduler is not None else None,
            "ema": ema.module.state_dict() if ema is not None else None, "best": best,
            "rng": {"torch": torch.get_rng_state(), "data": data_rng.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []},
            "world_size": world.size,
        }

    def save():
        if main:
            save_state(ckpt, state_dict_now())

    t0 = time.perf_counter()
    start_step = step
    window_loss, window_n, window_t = None, 0, time.perf_counter()
    extras: dict = {}
    mode = "a" if resumed_from is not None else "w"
    with open(metrics_path if main else os.devnull, mode) as log, \
            graceful_interrupt(terminate=world.size > 1) as stop, \
            tqdm(total=task.total_steps, initial=step, desc=f"train {task.kind}", unit="step",
                 disable=not (progress and main), dynamic_ncols=True) as bar:

        def write(record: dict):
            log.write(json.dumps(record) + "\n")
            log.flush()

        while step < task.total_steps:
            if task.lr_at is not None:
                for g in task.optimizer.param_groups:
                    g["lr"] = task.lr_at(step)
            model.train()
            with autocast(device, precision):
                loss, extras = replicas.loss(step, part)
            task.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if task.grad_clip:
                scaler.unscale_(task.optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), task.grad_clip)
            scaler.step(task.optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model, step)
            step += 1
            d = loss.detach().float()
            window_loss = d if window_loss is None else window_loss + d
            window_n += 1
            bar.update(1)

            if step % log_every == 0 or step == task.total_steps:
                # the global batch's: every process's part averaged
                logged = replicas.mean(torch.stack([window_loss / window_n,
                                                    *(torch.as_tensor(v, dtype=torch.float32, device=device)
                                                      for v in extras.values())]))
                last_loss = _scalar(logged[0])
                extras = dict(zip(extras, logged[1:]))
                if not math.isfinite(last_loss):
                    raise Hw2rtError(f"{task.kind}: the loss became {last_loss} by step {step} "
                                     f"(last good checkpoint: {ckpt}); try a lower lr")
                now = time.perf_counter()
                record = {"step": step, "epoch": step / task.steps_per_epoch, "loss": last_loss,
                          "lr": task.optimizer.param_groups[0]["lr"],
                          "img_per_s": window_n * task.batch_size / max(now - window_t, 1e-9),
                          **{k: _scalar(v) for k, v in extras.items()}}
                write(record)
                bar.set_postfix(loss=f"{last_loss:.4f}")
                window_loss, window_n, window_t = None, 0, now

            if step % task.steps_per_epoch == 0:
                epoch = step // task.steps_per_epoch
                if task.evaluate is not None and main:
                    result = task.evaluate(export_module())
                    write({"event": "eval", "step": step, "epoch": epoch, **result})
                    value = result[task.best_key]
                    if best is None or value > best["value"]:
                        best = {"key": task.best_key, "value": value, "epoch": epoch, "step": step,
                                "metric": dict(result), "model": _cpu_state(export_module())}
                    # none logged yet
                    shown = {"loss": f"{last_loss:.4f}"} if math.isfinite(last_loss) else {}
                    bar.set_postfix(**shown, **{task.best_key: f"{value:.4f}"})
                if task.scheduler is not None:
                    task.scheduler.step()
                save()
            elif save_every and step % save_every == 0:
                save()

            if on_step is not None:
                on_step(step, extras)
            if replicas.any(stop.requested, device) and step < task.total_steps:
                save()
                if main:
                    tqdm.write(f"interrupted at step {step}: resumable checkpoint {ckpt}")
                raise KeyboardInterrupt

        save()

    run_s = time.perf_counter() - t0
    final = export_module()
    if best is not None:
        final = copy.deepcopy(final)
        final.load_state_dict(best["model"])
    summary = {
        "kind": task.kind, "out_dir": str(out), "checkpoint": str(ckpt), "metrics": str(metrics_path),
        "steps": step, "epochs": step / task.steps_per_epoch, "steps_per_epoch": task.steps_per_epoch,
        "batch_size": task.batch_size, "resumed_from_step": resumed_from,
        "final_loss": last_loss if math.isfinite(last_loss) else None, "seed": seed, "device": str(device),
        "precision": precision, "processes": world.size,
        "ema_decay": task.ema_decay, "elapsed_s": elapsed0 + run_s,
        "images_per_s": (step - start_step) * task.batch_size / run_s if step > start_step else None,
        "best": {k: v for k, v in best.items() if k != "model"} if best else None,
        **task.summary_extra,
    }
    if not main:  # rank 0 exports and writes the summary
        return summary
    summary["exported"] = {k: str(v) for k, v in task.export(final.eval(), summary).items()}
    with atomic_path(out / SUMMARY) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


DATA_SEED = 2**40  # the data generator's seed is DATA_SEED + --seed: a stream apart from dropout's


def _dropout_seed(seed: int, rank: int, step: int) -> int:
    """The global generator's seed: --seed on rank 0 of a new run (one process draws as it always did);
    other ranks, and several processes resuming at `step`, each a stream of their own."""
    return seed if rank == 0 and step == 0 else seed + 2**41 * (rank + 1) + 1_000_003 * step


def format_summary(summary: dict) -> str:
    """A few lines for the CLI to print after training."""
    processes = f" x {summary['processes']} processes" if summary.get("processes", 1) > 1 else ""
    head = (f"{summary['kind']}: {summary['steps']} steps ({summary['epochs']:.2f} epochs) "
            f"on {summary['device']}{processes} ({summary['precision']}), {summary['elapsed_s']:.0f} s")
    lines = [head]
    if summary.get("final_loss") is not None:
        lines.append(f"  final loss {summary['final_loss']:.5f}")
    if summary.get("best"):
        b = summary["best"]
        lines.append(f"  best {b['key']} {b['value']:.4f} (epoch {b['epoch']})")
    if summary.get("images_per_s"):
        lines.append(f"  {summary['images_per_s']:.0f} images/s")
    for what, path in summary.get("exported", {}).items():
        lines.append(f"  {what}: {path}")
    lines.append(f"  resumable checkpoint: {summary['checkpoint']}")
    return "\n".join(lines)


def export_model(module: nn.Module, name: str, path, meta: dict, summary: dict, **extra) -> dict:
    """Write the trained `module` as hw2rt safetensors (fp16 parameters) with the run's metadata and
    its steps; returns {name: path} for the summary."""
    from hw2rt.checkpoints import save_checkpoint

    save_checkpoint(module, name, path, half=True, extra_meta={**meta, "steps": summary["steps"], **extra})
    return {name: path}

