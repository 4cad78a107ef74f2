"""GPU only: CUDA graphs and TensorRT on a real device (marked `gpu`; skipped without one).

The checks themselves live in hw2rt/bench/gpu_checks.py: the GPU machine has no pytest, so the gpu
suite (`benchmarks/gpu_check.sh`) runs the same functions as its "device checks" section.
"""

import pytest

from hw2rt.bench import gpu_checks
from hw2rt.engines.trt import import_tensorrt
from hw2rt.errors import Hw2rtError


def _has_tensorrt():
    try:
        import_tensorrt()
        return True
    except Hw2rtError:
        return False


@pytest.mark.gpu
def test_cuda_graphs_equal_eager_on_gpu():
    assert gpu_checks.graphs_equal_eager("cuda").startswith("ok:")


@pytest.mark.gpu
@pytest.mark.skipif(not _has_tensorrt(), reason="needs TensorRT >= 10")
def test_trt_engine_matches_torch_on_gpu(tmp_path):
    assert gpu_checks.trt_matches_torch("cuda", cache_dir=tmp_path).startswith("ok:")
