import os

import pytest
import torch

torch.set_num_threads(1)  # CI has 2 cores; tests stay predictable under load


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Exported graphs go to a per-run cache, never the user's ~/.cache/hw2rt."""
    os.environ["HW2RT_CACHE"] = str(tmp_path_factory.mktemp("hw2rt-cache"))


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
