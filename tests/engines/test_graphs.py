"""Batch buckets, padding, splitting and the CUDA-graph path (a recorder stands in for the GPU)."""
import itertools

import pytest
import torch

from hw2rt.engines.graphs import (
    BucketedRunner,
    GraphedEngine,
    _flatten,
    bucket_sizes,
    pad_rows,
    pick_bucket,
    plan_chunks,
)
from hw2rt.engines.torch import TorchEngine
from hw2rt.errors import Hw2rtError
from hw2rt.models import get_spec
from hw2rt.verify.parity import random_model

# --- buckets, padding, splitting (CPU) -----------------------------------------------------------

def test_bucket_sizes_and_choice():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(10) == (1, 2, 4, 8, 10)
    assert bucket_sizes(2000)[-2:] == (1024, 2000)
    b = bucket_sizes(10)
    assert [pick_bucket(n, b) for n in range(1, 11)] == [1, 2, 4, 4, 8, 8, 8, 8, 10, 10]
    assert pick_bucket(11, b) == 10
    with pytest.raises(ValueError):
        bucket_sizes(0)
    with pytest.raises(ValueError):
        pick_bucket(0, b)


def test_plan_chunks_splits_above_the_largest_bucket():
    b = (1, 2, 4, 8)
    assert plan_chunks(3, b) == [(0, 3, 4)]
    assert plan_chunks(8, b) == [(0, 8, 8)]
    assert plan_chunks(9, b) == [(0, 8, 8), (8, 9, 1)]
    assert plan_chunks(19, b) == [(0, 8, 8), (8, 16, 8), (16, 19, 4)]
    for n in range(1, 40):
        plan = plan_chunks(n, b)
        assert plan[0][0] == 0 and plan[-1][1] == n
        assert all(stop - start <= bucket and bucket in b for start, stop, bucket in plan)
        assert all(p[1] == q[0] for p, q in itertools.pairwise(plan))


def test_pad_rows_repeats_the_last_row():
    t = torch.arange(6.0).reshape(3, 2)
    p = pad_rows(t, 5)
    assert p.shape == (5, 2)
    assert torch.equal(p[:3], t) and torch.equal(p[3], t[2]) and torch.equal(p[4], t[2])
    assert pad_rows(t, 3) is t
    with pytest.raises(ValueError):
        pad_rows(t, 2)


@pytest.mark.parametrize("buckets", [(1, 2, 4, 8), (1, 3, 5)])
def test_bucketed_runner_equals_the_unbatched_function(buckets):
    seen = []

    def fn(x, t, scale=1.0):
        seen.append(x.shape[0])
        return {"y": x * scale + t[:, None, None].float(), "t2": t * 2}

    runner = BucketedRunner(fn, buckets)
    top = max(buckets)
    g = torch.Generator().manual_seed(0)
    for n in range(1, top + 4):
        x = torch.randn(n, 3, 4, generator=g)
        t = torch.randint(0, 100, (n,), generator=g)
        seen.clear()
        out = runner(x, t, scale=0.5)
        ref = fn(x, t, scale=0.5)
        assert set(out) == {"y", "t2"}
        assert torch.equal(out["y"], ref["y"]) and torch.equal(out["t2"], ref["t2"])
        calls = seen[:-1]  # the last entry is the reference call
        assert all(b in buckets for b in calls), calls
        assert sum(c for c in calls) >= n
        if n <= top:
            assert calls == [pick_bucket(n, buckets)]  # one call, padded to the nearest bucket
        else:
            assert calls[0] == top and len(calls) == len(plan_chunks(n, buckets))


def test_bucketed_runner_pads_with_real_rows_and_keeps_structure():
    got = {}

    def fn(pair):
        a, b = pair
        got["a"] = a.clone()
        return (a + 1, [b.sum(1)])

    runner = BucketedRunner(fn, (4,))
    a, b = torch.arange(3.0)[:, None], torch.ones(3, 2)
    out = runner((a, b))
    assert isinstance(out, tuple) and isinstance(out[1], list)
    assert torch.equal(out[0], a + 1) and torch.equal(out[1][0], torch.full((3,), 2.0))
    assert torch.equal(got["a"][:, 0], torch.tensor([0.0, 1.0, 2.0, 2.0]))  # padded with the last row
    assert runner.calls == 1 and runner.graph_count == 0  # CPU: no graphs


def test_bucketed_runner_rejects_mixed_batches():
    runner = BucketedRunner(lambda x, y: x, (2,))
    with pytest.raises(ValueError, match="same batch size"):
        runner(torch.ones(2, 1), torch.ones(3, 1))
    with pytest.raises(ValueError, match="tensor"):
        runner(1, 2)


class _RecordedGraph:
    """Stands in for a CUDA graph on the CPU: replay re-runs the recorded call and writes its
    results into the static outputs, as a graph replay overwrites its captured buffers."""

    def __init__(self, fn, args, kwargs, outputs):
        self.fn, self.args, self.kwargs, self.outputs = fn, args, kwargs, outputs
        self.replays = 0

    def replay(self):
        self.replays += 1
        fresh: list = []
        _flatten(self.fn(*self.args, **self.kwargs), fresh)
        for static, new in zip(self.outputs, fresh):
            static.copy_(new)


def _recording_runner(fn, buckets, fail=False):
    runner = BucketedRunner(fn, buckets)
    runner._graph_devices = ("cpu",)
    graphs = []

    def record(args, kwargs, device):
        if fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        out = fn(*args, **kwargs)
        leaves: list = []
        _flatten(out, leaves)
        graphs.append(_RecordedGraph(fn, args, kwargs, leaves))
        return graphs[-1], out

    runner._record = record
    return runner, graphs


def test_graph_path_static_buffers_padding_and_replay():
    calls = []

    def fn(feeds):
        calls.append(feeds["x"].shape[0])
        return {"y": feeds["x"] * 2 + feeds["t"][:, None]}

    runner, graphs = _recording_runner(fn, (2, 4))
    g = torch.Generator().manual_seed(0)
    for n in (3, 1, 4, 3, 9, 2):
        x, t = torch.randn(n, 5, generator=g), torch.randn(n, generator=g)
        out = runner({"x": x, "t": t})
        torch.testing.assert_close(out["y"], x * 2 + t[:, None], rtol=0, atol=0)
        y_first = out["y"].clone()
        runner({"x": x + 1, "t": t})  # the next replay overwrites the static outputs ...
        assert torch.equal(out["y"], y_first)  # ... but results handed out were cloned
    assert runner.graph_count == 2 and len(graphs) == 2  # one capture per bucket, then replays only
    assert sorted(gr.args[0]["x"].shape[0] for gr in graphs) == [2, 4]
    assert sum(gr.replays for gr in graphs) == runner.calls
    # The static input of bucket 4 was padded with copies of the last real row.
    big = next(gr for gr in graphs if gr.args[0]["x"].shape[0] == 4)
    last = runner({"x": torch.arange(15.0).reshape(3, 5), "t": torch.zeros(3)})
    assert last["y"].shape == (3, 5) and torch.equal(big.args[0]["x"][3], big.args[0]["x"][2])


def test_graph_capture_failure_falls_back_to_eager():
    runner, _ = _recording_runner(lambda x: x + 1, (4,), fail=True)
    with pytest.warns(UserWarning, match="capture failed"):
        out = runner(torch.ones(3, 2))
    assert torch.equal(out, torch.full((3, 2), 2.0))
    assert runner.graphs is False and "stream is capturing" in runner.graph_error
    assert torch.equal(runner(torch.zeros(5, 2)), torch.ones(5, 2))  # later calls run eagerly


def test_graphed_engine_on_cpu_equals_the_engine():
    net = random_model("digit_unet", {"n_feat": 8})
    engine = TorchEngine(net, "digit_unet")
    graphed = GraphedEngine(engine, (1, 2, 4))
    assert graphed.max_batch is None and graphed.model == "digit_unet" and "buckets" in graphed.name
    spec = get_spec("digit_unet")
    for n in range(1, 8):
        feeds = spec.example_inputs(n, seed=n)
        ref = engine.run(feeds)["eps"]
        out = graphed.run(feeds)["eps"]
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    x = spec.example_inputs(3)
    eps = graphed(x["x"], x["c"], x["t"], x["mask"])  # positional, as the samplers call it
    assert eps.shape == (3, 3, 28, 28)
    with pytest.raises(Hw2rtError, match="missing"):
        graphed.run({"x": x["x"]})
    graphed.close()
    assert engine.closed


def test_a_function_that_fails_eagerly_fails_once_naming_the_bucket():
    """The warm-up is an eager run: its error is the function's, not the capture's, so it is raised once
    (one line naming the bucket), not retried eagerly to fail the same way a second time."""
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        raise ValueError("input 'x' is bad\nsecond line of a long backend message")

    runner, graphs = _recording_runner(fn, (2, 4))
    with pytest.raises(Hw2rtError, match=r"^batch bucket 4 \(3 rows\): ValueError: input 'x' is bad$"):
        runner(torch.ones(3, 2))
    assert calls == [4] and graphs == []  # one eager run, no capture, no second identical failure
    assert runner.graphs is True and runner.graph_error is None  # nothing was wrong with the graphs


def test_an_eager_failure_after_a_failed_capture_names_both_in_one_line():
    state = {"captured": False}

    def fn(x):
        if state["captured"]:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        return x + 1

    runner, _ = _recording_runner(fn, (4,), fail=True)
    real_record = runner._record

    def record(args, kwargs, device):
        state["captured"] = True
        return real_record(args, kwargs, device)

    runner._record = record
    with pytest.warns(UserWarning, match="capture failed"), pytest.raises(Hw2rtError) as err:
        runner(torch.ones(3, 2))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("CUDA graph capture of bucket 4: RuntimeError: operation not")
    assert "then the eager run failed: RuntimeError: CUDA error" in msg


class _FakeStream:
    made = 0

    def __init__(self, device=None):
        _FakeStream.made += 1

    def wait_stream(self, other):
        pass


def test_one_capture_stream_per_runner_so_the_pool_is_reused_across_buckets(monkeypatch):
    """Every warm-up and capture of a runner runs on one side stream (a block freed on one stream is reused
    only on that stream): not a new stream per bucket. torch.cuda's stream and graph calls are stand-ins."""
    import contextlib

    used = []

    class FakeGraph:
        def replay(self):
            pass

    @contextlib.contextmanager
    def graph(g, pool=None, stream=None):
        used.append(("capture", stream, pool))
        yield

    @contextlib.contextmanager
    def stream(s):
        used.append(("warm-up", s, None))
        yield

    _FakeStream.made = 0
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: object.__new__(_FakeStream))
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: ("pool",))
    runner = BucketedRunner(lambda x: x * 2, (2, 4, 8))
    runner._graph_devices = runner._stream_devices = ("cpu",)
    for n in (1, 3, 7, 3):
        assert runner(torch.ones(n, 2)).shape == (n, 2)
    assert runner.graph_count == 3 and _FakeStream.made == 1
    streams = {id(s) for _, s, _ in used}
    assert len(streams) == 1 and [kind for kind, _, _ in used] == ["warm-up", "capture"] * 3
    assert {pool for kind, _, pool in used if kind == "capture"} == {("pool",)}  # one pool for all buckets
