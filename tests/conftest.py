import pytest
import torch

torch.set_num_threads(1)  # CI has 2 cores; tests stay predictable under load


@pytest.fixture
def seed():
    torch.manual_seed(0)
    return 0
