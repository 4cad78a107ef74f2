"""The one Engine interface every backend implements (Polygraphy's runner, kept small).

    engine.inputs / engine.outputs   TensorSpecs from the model registry (dynamic axes named)
    engine.run({name: tensor})       -> {name: tensor}; torch tensors on engine.device out,
                                        torch tensors (any device) or numpy arrays in
    engine(*tensors)                 positional shorthand in spec order: one output -> a tensor,
                                        several -> a tuple. This is the `denoiser`/`model_fn`
                                        callable the samplers take.
    engine.max_batch                 largest batch one call accepts (None: no limit)
    engine.device, engine.precision, engine.backend, engine.close(), `with engine: ...`
    engine.describe()                what computation this is: class, backend, precision, device,
                                        fp32 islands (torch), CUDA-graph buckets; for reports and tests

Feeds are validated against the spec before any backend sees them, so a wrong name, dtype,
rank or size is one readable Hw2rtError instead of a backend's stack trace.
"""
from collections.abc import Mapping

import numpy as np
import torch

from hw2rt.errors import Hw2rtError


class Engine:
    """Base class: spec bookkeeping, feed validation and the positional call. Subclasses set
    `backend`, and implement `_run(feeds) -> dict` (feeds already validated, on `device`)."""

    backend = "?"

    def __init__(self, model: str, inputs: tuple, outputs: tuple, *, device: str | torch.device = "cpu",
                 precision: str = "fp32", max_batch: int | None = None, source: str = ""):
        self.model = model
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.device = torch.device(device)
        self.precision = precision
        self.max_batch = max_batch
        self.source = source  # what it was built from (a file), for error messages
        self.auto_choice = None  # engines/auto.Choice when open_engine chose the backend
        self.closed = False

    @property
    def name(self) -> str:
        return (f"{self.model} ({self.backend} {self.precision} {self.device.type}"
                f"{', ' + self.source if self.source else ''})")

    def describe(self) -> dict:
        return {"engine": type(self).__name__, "backend": self.backend, "precision": self.precision,
                "device": str(self.device), "max_batch": self.max_batch, "islands": None, "graphs": False,
                "buckets": None, "auto": self.auto_choice.line() if self.auto_choice else None}

    def run(self, feeds: Mapping) -> dict:
        if self.closed:
            raise Hw2rtError(f"{self.name}: engine is closed")
        feeds = check_feeds(self.inputs, feeds, max_batch=self.max_batch, where=self.name, model=self.model)
        return self._run({k: v.to(self.device) for k, v in feeds.items()})

    def __call__(self, *args):
        if len(args) != len(self.inputs):
            names = ", ".join(s.name for s in self.inputs)
            raise Hw2rtError(f"{self.name}: expected {len(self.inputs)} inputs ({names}), got {len(args)}")
        out = self.run({s.name: a for s, a in zip(self.inputs, args)})
        values = tuple(out[s.name] for s in self.outputs)
        return values[0] if len(values) == 1 else values

    def _run(self, feeds: dict) -> dict:
        raise NotImplementedError

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"


def _as_tensor(value, name: str, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise Hw2rtError(f"{where}: input {name!r} must be a torch tensor or numpy array, "
                     f"got {type(value).__name__}")


def check_feeds(inputs: tuple, feeds: Mapping, *, max_batch: int | None = None,
                where: str = "engine", model: str | None = None) -> dict:
    """Validate `feeds` against the input specs; returns {name: torch.Tensor} in spec order.
    With `model`, also the sizes its spec requires of the named axes (`ModelSpec.check_dims`).

    Checks: exactly the spec's names; dtype equal to the spec's (no silent casts: an fp64 or
    int32 feed is a caller bug); rank; fixed sizes; one size per named axis across all inputs
    (every input has the same batch); 1 <= batch <= max_batch.
    """
    if not isinstance(feeds, Mapping):
        raise Hw2rtError(f"{where}: feeds must be a dict of name -> tensor, got {type(feeds).__name__}")
    expected = [s.name for s in inputs]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + \
                ([f"unexpected {', '.join(map(repr, extra))}"] if extra else [])
        raise Hw2rtError(f"{where}: {'; '.join(parts)} (inputs are {', '.join(expected)})")
    out, sizes = {}, {}
    for s in inputs:
        t = _as_tensor(feeds[s.name], s.name, where)
        if t.dtype != s.dtype:
            raise Hw2rtError(f"{where}: input {s.name!r} has dtype {t.dtype}, expected {s.dtype}")
        want = "[" + ", ".join(map(str, s.shape)) + "]"
        if t.dim() != len(s.shape):
            raise Hw2rtError(f"{where}: input {s.name!r} has shape {list(t.shape)}, expected {want}")
        for axis, (n, d) in enumerate(zip(t.shape, s.shape)):
            if isinstance(d, str):
                if sizes.setdefault(d, (n, s.name))[0] != n:
                    other_n, other = sizes[d]
                    raise Hw2rtError(f"{where}: input {s.name!r} has {d} {n} but {other!r} has {other_n}")
            elif n != d:
                raise Hw2rtError(f"{where}: input {s.name!r} has shape {list(t.shape)}, expected {want}")
        out[s.name] = t
    batch = sizes.get("batch", (1, ""))[0]
    if batch < 1:
        raise Hw2rtError(f"{where}: empty batch")
    if max_batch is not None and batch > max_batch:
        raise Hw2rtError(f"{where}: batch {batch} exceeds this engine's max_batch {max_batch}")
    if model is not None:
        from hw2rt.models import get_spec

        get_spec(model).check_dims({d: n for d, n in named_dims(inputs, out).items() if d != "batch"}, where)
    return out


def graph_spec(path, meta: dict, model: str | None = None):
    """The ModelSpec of the hw2rt export at `path`, from its metadata (`meta`: the hw2rt keys, prefix
    removed); a graph that is not hw2rt's, or holds another model than `model`, is a one-line error."""
    from hw2rt.models import get_spec

    if "model" not in meta:
        raise Hw2rtError(f"{path}: not an hw2rt export (no hw2rt metadata); export it with hw2rt first")
    if model is not None and meta["model"] != model:
        raise Hw2rtError(f"{path}: holds a {meta['model']} graph, but this needs a {model}")
    try:
        return get_spec(meta["model"])
    except Hw2rtError as exc:
        raise Hw2rtError(f"{path}: {exc}") from None


def check_graph_io(path, spec, inputs: list, outputs: list):
    """A graph's inputs and outputs, as its backend reads them ([(name, torch dtype, rank)]), against the
    spec's: the I/O contract every engine over an exported graph keeps."""
    for kind, got, want in (("inputs", inputs, spec.inputs), ("outputs", outputs, spec.outputs)):
        want_sig = [(s.name, s.dtype, len(s.shape)) for s in want]
        if list(got) != want_sig:
            raise Hw2rtError(f"{path}: graph {kind} {list(got)} do not match the {spec.name} spec {want_sig}")


def named_dims(inputs: tuple, feeds: dict) -> dict:
    """The sizes of the named axes in feeds (validated: one size per name)."""
    return {d: int(n) for s in inputs for n, d in zip(feeds[s.name].shape, s.shape) if isinstance(d, str)}


def output_shapes(inputs: tuple, outputs: tuple, feeds: dict) -> dict:
    """Concrete output shapes from the named axes of validated feeds (for preallocated outputs)."""
    dims = named_dims(inputs, feeds)
    return {s.name: s.concrete_shape(dims) for s in outputs}
