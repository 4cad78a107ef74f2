"""Shared fixtures: a private export cache for the run, the `gpu` marker's skip, exported small graphs."""
import os

import pytest
import torch

from hw2rt.export import export_onnx
from tests.helpers import DIMS, small_net

torch.set_num_threads(1)  # CI has 2 cores; tests stay predictable under load


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device; without one they skip and say so."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu); none is visible to torch here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Exported graphs go to a per-run cache, never the user's ~/.cache/hw2rt."""
    os.environ["HW2RT_CACHE"] = str(tmp_path_factory.mktemp("hw2rt-cache"))


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(model, precision) -> (net, path): one export of each small network per pair for the run."""
    root, made = tmp_path_factory.mktemp("onnx"), {}

    def get(model, precision="fp32"):
        if (model, precision) not in made:
            net = small_net(model)
            path = export_onnx(net, model, root / f"{model}.{precision}.onnx", precision=precision,
                               dims=DIMS.get(model))
            made[model, precision] = (net, path)
        return made[model, precision]

    return get
