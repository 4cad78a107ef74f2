"""Shared, session-scoped engines for the parity tests: one export per (model, precision)."""
import pytest

from hw2rt.engines import TorchEngine, open_engine
from hw2rt.verify.parity import SMALL, random_model


@pytest.fixture(scope="session")
def parity_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hw2rt-cache")


@pytest.fixture(scope="session")
def engines(parity_cache):
    """engines(model, precision) -> (reference torch fp32 engine, ort candidate, dims), built once."""
    made = {}

    def get(model: str, precision: str):
        if (model, precision) not in made:
            config, dims = SMALL[model]
            net = random_model(model, config, seed=0)
            ref = TorchEngine(net, model)
            cand = open_engine(model, net, backend="ort", precision=precision, threads=1,
                               cache_dir=parity_cache, dims=dims)
            made[model, precision] = (ref, cand, dims)
        return made[model, precision]

    yield get
    for ref, cand, _ in made.values():
        ref.close()
        cand.close()
