"""GPU only: CUDA graphs and TensorRT on a real device (marked `gpu`; skipped without one)."""

import pytest
import torch

from hw2rt.engines import open_engine
from hw2rt.engines.graphs import (
    GraphedEngine,
)
from hw2rt.engines.torch import TorchEngine
from hw2rt.errors import Hw2rtError
from hw2rt.models import get_spec
from hw2rt.parity import random_model


def _has_tensorrt():
    try:
        from hw2rt.engines.trt import import_tensorrt
        import_tensorrt()
        return True
    except Hw2rtError:
        return False


needs_trt = pytest.mark.skipif(not _has_tensorrt(), reason="needs TensorRT >= 10")


# --- GPU only ----------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_graphs_equal_eager_on_gpu():
    net = random_model("digit_unet", {"n_feat": 32})
    graphed = open_engine("digit_unet", net, backend="torch", precision="fp16", device="cuda", max_batch=8)
    eager = graphed.engine
    assert graphed.runner.buckets == (1, 2, 4, 8)
    spec = get_spec("digit_unet")
    for n in (1, 3, 8, 11):
        feeds = {k: v.cuda() for k, v in spec.example_inputs(n, seed=n).items()}
        # Padded and unpadded batches may pick different cuDNN kernels: fp16 rounding, not equality.
        torch.testing.assert_close(graphed.run(feeds)["eps"], eager.run(feeds)["eps"], rtol=5e-3, atol=5e-3)
    assert graphed.runner.graph_error is None and graphed.runner.graph_count >= 3


@pytest.mark.gpu
@needs_trt
def test_trt_engine_matches_torch_on_gpu(tmp_path):
    net = random_model("digit_unet", {"n_feat": 32})
    ref = TorchEngine(net, "digit_unet", device="cuda")
    engine = open_engine("digit_unet", net, backend="trt", precision="fp16", device="cuda",
                         cache_dir=tmp_path, max_batch=8)
    feeds = {k: v.cuda() for k, v in get_spec("digit_unet").example_inputs(5).items()}
    a, b = engine.run(feeds)["eps"], ref.run(feeds)["eps"]
    assert (a - b).abs().max() <= 1e-2 * b.abs().max()
    graphed = GraphedEngine(engine)
    torch.testing.assert_close(graphed.run(feeds)["eps"], a, rtol=5e-3, atol=5e-3)
