"""Fixed-size batch buckets, and one CUDA graph per bucket, for any engine or callable.

A GPU spends most of a small call launching kernels; a CUDA graph replays a whole captured
call with one launch, but only for the shapes it was captured with. So requests are padded
to a few bucket sizes (1, 2, 4, ..., max): a request of n rows runs in the smallest bucket
that holds it, padded by repeating its last row, and the outputs are sliced back to n rows.
A request above the largest bucket is split into chunks of the largest bucket (the last
chunk padded to its own bucket).

The bucket, padding and splitting logic is plain tensor code: on a CPU (or with graphs
off) `BucketedRunner` runs the function eagerly on the padded chunks, which is how it is
tested. When the inputs live on a CUDA device it captures one `torch.cuda.CUDAGraph` per
(bucket, input layout), after a warm-up run on a side stream, with static input buffers
that each request is copied into. `open_engine(..., graphs=...)` wraps engines in `GraphedEngine`;
the samplers never know.

Padding rows are real rows (copies of the last one), so a row-independent function gives
exactly its unpadded result on the kept rows. Functions that mix rows (BatchNorm in train
mode) are not row-independent and must not be bucketed.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hw2rt.engines.base import Engine, check_feeds
from hw2rt.errors import Hw2rtError, first_line

# --- buckets, planning, padding (pure; CPU-tested) ------------------------------------------------


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch` itself: 10 -> (1, 2, 4, 8, 10)."""
    max_batch = int(max_batch)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 (got {max_batch})")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return tuple(sizes)


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted({int(b) for b in buckets}))
    if not out or out[0] < 1:
        raise ValueError(f"buckets must be positive integers (got {list(buckets)})")
    return out


def pick_bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding `n` rows (the largest bucket when none does)."""
    if n < 1:
        raise ValueError(f"need at least one row (got {n})")
    for b in buckets:
        if b >= n:
            return b
    return buckets[-1]


def plan_chunks(n: int, buckets: Sequence[int]) -> list[tuple[int, int, int]]:
    """(start, stop, bucket) per chunk: full chunks of the largest bucket, the rest in its own bucket."""
    buckets = _check_buckets(buckets)
    if n < 1:
        raise ValueError(f"need at least one row (got {n})")
    top, plan, start = buckets[-1], [], 0
    while n - start > top:
        plan.append((start, start + top, top))
        start += top
    plan.append((start, n, pick_bucket(n - start, buckets)))
    return plan


def pad_rows(t: torch.Tensor, size: int) -> torch.Tensor:
    """`t` with its last row repeated until it has `size` rows (itself when it has that many)."""
    n = t.shape[0]
    if n == size:
        return t
    if not 0 < n < size:
        raise ValueError(f"cannot pad {n} rows to {size}")
    return torch.cat([t, t[-1:].expand(size - n, *t.shape[1:])])


# --- nested arguments and results: tensors in tuples, lists and dicts -----------------------------


def _flatten(obj, leaves: list):
    """Append the leaves of `obj` to `leaves`; return a spec that `_unflatten` rebuilds it from."""
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(_flatten(o, leaves) for o in obj))
    if isinstance(obj, dict):
        return (dict, tuple((k, _flatten(v, leaves)) for k, v in obj.items()))
    leaves.append(obj)
    return None


def _unflatten(spec, it):
    if spec is None:
        return next(it)
    kind, children = spec
    if kind is dict:
        return {k: _unflatten(c, it) for k, c in children}
    return kind(_unflatten(c, it) for c in children)


def _spec_key(spec):
    """A hashable form of a spec (keys of dicts may be anything hashable)."""
    if spec is None:
        return None
    kind, children = spec
    if kind is dict:
        return ("dict", tuple((k, _spec_key(c)) for k, c in children))
    return (kind.__name__, tuple(_spec_key(c) for c in children))


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: list  # static input buffers, one per tensor argument, `bucket` rows each
    outputs: list  # static output tensors the graph writes on every replay
    out_spec: object


class BucketedRunner:
    """`runner(*args, **kwargs)` = `fn(*args, **kwargs)`, run in fixed-size buckets.

    Every tensor among the arguments (also inside tuples, lists and dicts) is a batch with the
    same number of rows in dim 0; other arguments pass through unchanged (and, on the graph
    path, are part of what a captured graph is keyed by). `fn` returns a tensor, or tuples,
    lists or dicts of tensors, each with the batch in dim 0; the result has the same structure.

    buckets: the allowed batch sizes; default `bucket_sizes(max_batch)`.
    graphs: capture and replay CUDA graphs when the inputs are CUDA tensors (ignored on CPU).
    warmup: eager runs on the side stream before a capture (cuDNN autotuning, lazy init).
    """

    _graph_devices = ("cuda",)  # where graphs are captured (tests swap in a recorder for the CPU)
    _stream_devices = ("cuda",)  # where warm-up and capture run on a side stream (tests: fakes on the CPU)

    def __init__(self, fn: Callable, buckets: Sequence[int] | None = None, *, max_batch: int | None = None,
                 graphs: bool = True, warmup: int = 1):
        if buckets is None:
            if max_batch is None:
                raise ValueError("give buckets or max_batch")
            buckets = bucket_sizes(max_batch)
        self.fn = fn
        self.buckets = _check_buckets(buckets)
        self.max_batch = self.buckets[-1]
        self.graphs = bool(graphs)
        self.warmup = int(warmup)
        self._graphs: dict = {}
        self._pool = None
        self._stream = None  # the capture stream (_capture_stream)
        self.graph_error = None  # why capture failed (graphs are then off for this runner)
        self.calls = 0  # fn launches (eager calls or graph replays), for tests and benchmarks

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def close(self):
        """Drop the captured graphs and their memory."""
        self._graphs.clear()
        self._pool = self._stream = None

    def __call__(self, *args, **kwargs):
        leaves: list = []
        spec = _flatten((args, kwargs), leaves)
        tensor_idx = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        if not tensor_idx:
            raise ValueError("BucketedRunner needs at least one tensor argument (the batch)")
        sizes = {leaves[i].shape[0] if leaves[i].dim() else None for i in tensor_idx}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(f"all tensor arguments need the same batch size in dim 0 "
                             f"(found {sorted(map(str, sizes))})")
        n = sizes.pop()
        if n == 0:
            return self.fn(*args, **kwargs)
        use_graphs = self.graphs and all(leaves[i].device.type in self._graph_devices for i in tensor_idx)
        results, out_spec = [], None
        for start, stop, bucket in plan_chunks(n, self.buckets):
            chunk = list(leaves)
            for i in tensor_idx:
                chunk[i] = leaves[i][start:stop]
            if use_graphs:
                outs, out_spec = self._replay(chunk, spec, tensor_idx, stop - start, bucket)
            else:
                outs, out_spec = self._eager(chunk, spec, tensor_idx, stop - start, bucket)
            results.append(outs)
        if len(results) == 1:
            merged = results[0]
        else:
            merged = [torch.cat([r[j] for r in results]) for j in range(len(results[0]))]
        return _unflatten(out_spec, iter(merged))

    # eager: pad, call, slice back (a chunk that fills its bucket is passed through untouched)
    def _eager(self, chunk, spec, tensor_idx, n, bucket):
        if n != bucket:
            for i in tensor_idx:
                chunk[i] = pad_rows(chunk[i], bucket)
        args, kwargs = _unflatten(spec, iter(chunk))
        self.calls += 1
        out_leaves: list = []
        out_spec = _flatten(self.fn(*args, **kwargs), out_leaves)
        return [_rows(o, n) for o in out_leaves], out_spec

    def _key(self, chunk, spec, tensor_idx, bucket):
        layout = []
        for i, leaf in enumerate(chunk):
            if i in tensor_idx:
                layout.append((leaf.dtype, tuple(leaf.shape[1:]), str(leaf.device)))
            else:
                layout.append(("static", leaf if _hashable(leaf) else id(leaf)))
        return (bucket, _spec_key(spec), tuple(layout))

    def _replay(self, chunk, spec, tensor_idx, n, bucket):
        key = self._key(chunk, spec, tensor_idx, bucket)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture_or_fall_back(chunk, spec, tensor_idx, n, bucket)
            if not isinstance(entry, _Graph):
                return entry  # this chunk's eager result: graphs are off from now on
            self._graphs[key] = entry
        for buf, i in zip(entry.inputs, tensor_idx):
            src = chunk[i]
            buf[:n].copy_(src)
            if n < bucket:
                buf[n:].copy_(src[-1:].expand(bucket - n, *src.shape[1:]))
        entry.graph.replay()
        self.calls += 1
        # Clone: the static outputs are overwritten by the next replay (and graphs share a pool).
        return [o[:n].clone() if isinstance(o, torch.Tensor) else o for o in entry.outputs], entry.out_spec

    def _capture_or_fall_back(self, chunk, spec, tensor_idx, n, bucket):
        """A new bucket's graph; or, when only the capture fails, this chunk run eagerly (graphs off).

        A function that fails eagerly (the warm-up run) is not a capture problem: its error is raised
        once, naming the bucket, rather than retried eagerly to fail the same way again."""
        static = self._static_inputs(chunk, tensor_idx, bucket)
        args, kwargs = _unflatten(spec, iter(static))
        device = chunk[tensor_idx[0]].device
        try:
            self._warm_up(args, kwargs, device)
        except Exception as exc:
            raise Hw2rtError(f"batch bucket {bucket} ({n} rows): {type(exc).__name__}: "
                             f"{first_line(exc, 300)}") from exc
        try:
            graph, out = self._record(args, kwargs, device)
        except Exception as exc:  # noqa: BLE001 -- a backend that cannot be captured still runs, eagerly
            self.graphs = False
            self.graph_error = f"bucket {bucket}: {type(exc).__name__}: {first_line(exc, 300)}"
            warnings.warn(f"CUDA graph capture failed, running eagerly: {self.graph_error}", stacklevel=4)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            try:
                return self._eager(chunk, spec, tensor_idx, n, bucket)
            except Exception as again:
                raise Hw2rtError(f"CUDA graph capture of {self.graph_error}; then the eager run failed: "
                                 f"{type(again).__name__}: {first_line(again, 300)}") from again
        out_leaves: list = []
        out_spec = _flatten(out, out_leaves)
        return _Graph(graph, [static[i] for i in tensor_idx], out_leaves, out_spec)

    def _static_inputs(self, chunk, tensor_idx, bucket) -> list:
        """`chunk` with its tensors copied into new `bucket`-row buffers (padded): the graph's inputs."""
        static = list(chunk)
        for i in tensor_idx:
            buf = torch.empty((bucket, *chunk[i].shape[1:]), dtype=chunk[i].dtype, device=chunk[i].device)
            buf.copy_(pad_rows(chunk[i], bucket))
            static[i] = buf
        return static

    def _capture_stream(self, device):
        """The runner's one side stream (None off CUDA): every warm-up and capture runs on it, so the
        graphs' shared pool can reuse one bucket's freed memory in the next (the caching allocator
        reuses a block only on the stream that freed it)."""
        if device.type not in self._stream_devices:
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=device)
        return self._stream

    def _warm_up(self, args, kwargs, device):
        """Eager runs before a capture (cuDNN autotuning, lazy init), on the capture stream."""
        side = self._capture_stream(device)
        if side is None:
            for _ in range(max(1, self.warmup)):
                self.fn(*args, **kwargs)
            return
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(max(1, self.warmup)):
                self.fn(*args, **kwargs)
        torch.cuda.current_stream(device).wait_stream(side)

    def _record(self, args, kwargs, device):
        """Capture one call on the capture stream: (graph, its static outputs)."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one pool: graphs replay one at a time
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=self._capture_stream(device)):
            out = self.fn(*args, **kwargs)
        return graph, out


def _rows(o, n):
    return o[:n] if isinstance(o, torch.Tensor) and o.dim() and o.shape[0] > n else o


def _hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


class GraphedEngine(Engine):
    """An Engine whose calls go through a `BucketedRunner`: padded to buckets, one CUDA graph each.

    Same interface and contract as the wrapped engine (`engine.model/inputs/outputs/device/
    precision/backend`); a request larger than the largest bucket is split instead of refused.
    Host feeds of a CUDA engine are moved to the device first, so that the graphs apply.
    """

    def __init__(self, engine: Engine, buckets: Sequence[int] | None = None, *, max_batch: int | None = None,
                 graphs: bool = True, warmup: int = 1):
        if buckets is None and max_batch is None:
            max_batch = engine.max_batch
            if not max_batch:
                raise ValueError(f"{engine.name} has no max_batch: give buckets or max_batch")
        runner = BucketedRunner(engine.run, buckets, max_batch=max_batch, graphs=graphs, warmup=warmup)
        if engine.max_batch is not None and runner.max_batch > engine.max_batch:
            raise ValueError(f"bucket {runner.max_batch} exceeds {engine.name}'s max_batch "
                             f"{engine.max_batch}")
        super().__init__(engine.model, engine.inputs, engine.outputs, device=engine.device,
                         precision=engine.precision, max_batch=None, source=engine.source)
        self.engine = engine
        self.runner = runner
        self.backend = engine.backend

    @property
    def name(self) -> str:
        mode = "CUDA graphs" if self.runner.graphs and self.device.type == "cuda" else "buckets"
        return f"{self.engine.name} [{mode} {','.join(map(str, self.runner.buckets))}]"

    def describe(self) -> dict:
        return {**self.engine.describe(), "graphs": True, "buckets": list(self.runner.buckets)}

    def run(self, feeds) -> dict:
        if self.closed:
            raise Hw2rtError(f"{self.name}: engine is closed")
        # readable errors before any padding
        feeds = check_feeds(self.inputs, feeds, where=self.name, model=self.model)
        if self.device.type == "cuda":
            feeds = {k: v.to(self.device, non_blocking=True) for k, v in feeds.items()}
        return self.runner(feeds)

    def close(self):
        self.runner.close()
        self.engine.close()
        super().close()
