"""Correctness checks that need the device: CUDA graphs against eager, TensorRT against torch.

The GPU machine has no pytest, so these are plain functions: the gpu suite runs them as a section
(`checks`), and tests/gpu/test_gpu.py runs the same functions under pytest where a GPU is. On a CPU
the graphs check walks the same bucketing code eagerly; the TensorRT check says why it cannot run.
Each returns {check: result} with result "ok: ..." or "skipped: why"; a mismatch raises AssertionError.
"""
from __future__ import annotations

import torch

from hw2rt.bench.runners import is_cuda
from hw2rt.engines import open_engine
from hw2rt.engines.graphs import GraphedEngine
from hw2rt.errors import Hw2rtError
from hw2rt.models import get_spec
from hw2rt.verify.parity import random_model

CONFIG = {"n_feat": 32}


def _feeds(n: int, device) -> dict:
    return {k: v.to(device) for k, v in get_spec("digit_unet").example_inputs(n, seed=n).items()}


def graphs_equal_eager(device) -> str:
    """The digit UNet behind buckets of at most 8 (CUDA graphs on a GPU) against the same engine
    eagerly, at batches that fill a bucket, pad one, and exceed the largest (split)."""
    precision = "fp16" if is_cuda(device) else "fp32"
    net = random_model("digit_unet", CONFIG)
    graphed = open_engine("digit_unet", net, backend="torch", precision=precision, device=device, graphs=True,
                          max_batch=8)
    # The reference has no batch limit: 11 rows go through in one call (the graphed engine splits them).
    eager = open_engine("digit_unet", net, backend="torch", precision=precision, device=device, graphs=False)
    assert graphed.runner.buckets == (1, 2, 4, 8), graphed.runner.buckets
    for n in (1, 3, 8, 11):
        feeds = _feeds(n, device)
        # Padded and unpadded batches may pick different cuDNN kernels: fp16 rounding, not equality.
        torch.testing.assert_close(graphed.run(feeds)["eps"], eager.run(feeds)["eps"], rtol=5e-3, atol=5e-3)
    runner = graphed.runner
    if is_cuda(device):
        assert runner.graph_error is None, runner.graph_error
        assert runner.graph_count >= 3, runner.graph_count
        return f"ok: {precision}, batches 1, 3, 8, 11 within 5e-3; {runner.graph_count} CUDA graphs captured"
    return f"ok: {precision}, batches 1, 3, 8, 11 equal to eager through the buckets (no CUDA graphs on CPU)"


def trt_matches_torch(device, cache_dir=None) -> str:
    """A TensorRT fp16 plan of the digit UNet against torch fp32 (1% of the output's range), and the
    same plan behind CUDA graphs against itself."""
    from hw2rt.engines.trt import import_tensorrt

    if not is_cuda(device):
        return "skipped: TensorRT needs a CUDA GPU"
    try:
        import_tensorrt()
    except Hw2rtError as exc:
        return f"skipped: {exc}"
    net = random_model("digit_unet", CONFIG)
    ref = open_engine("digit_unet", net, backend="torch", precision="fp32", device=device, graphs=False)
    # graphs=False: on CUDA open_engine's default ("auto") already wraps the plan in graphs
    engine = open_engine("digit_unet", net, backend="trt", precision="fp16", device=device, graphs=False,
                         cache_dir=cache_dir, max_batch=8)
    feeds = _feeds(5, device)
    a, b = engine.run(feeds)["eps"], ref.run(feeds)["eps"]
    err = float((a.float() - b).abs().max() / b.abs().max())
    assert err <= 1e-2, f"TensorRT fp16 vs torch fp32: max abs error {err:.2e} of the output's range"
    graphed = GraphedEngine(engine)
    torch.testing.assert_close(graphed.run(feeds)["eps"], a, rtol=5e-3, atol=5e-3)
    return f"ok: fp16 plan within {err:.1e} of torch fp32's range; behind CUDA graphs equal within 5e-3"


def run_checks(device, cache_dir=None) -> dict:
    """Every check: {name: "ok: ..." or "skipped: ..."}; the first mismatch raises."""
    return {"graphs_equal_eager": graphs_equal_eager(device),
            "trt_matches_torch": trt_matches_torch(device, cache_dir)}
