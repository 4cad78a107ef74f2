"""The torch backend compiled ahead of time on the CPU (engines/compiled.py): one AOTInductor package per
non-batch shape, dynamic in the batch, built once into the hw2rt cache and loaded from it after."""
import torch

from hw2rt.engines import TorchEngine
from hw2rt.models import get_spec
from hw2rt.verify.parity import BUDGETS, compare_outputs
from tests.helpers import small_net


def test_a_compiled_bf16_engine_is_built_once_then_loaded_and_matches_eager(tmp_path, monkeypatch):
    net, spec = small_net("dann"), get_spec("dann")
    feeds = spec.example_inputs(6, seed=0)
    eager = TorchEngine(net, "dann", precision="bf16")
    compiled = TorchEngine(net, "dann", precision="bf16", compile=True, cache_dir=tmp_path)
    out = compiled.run(feeds)
    (entry,) = compiled._forward.entries.values()
    assert entry.built and entry.path.is_file() and entry.path.is_relative_to(tmp_path / "aoti")
    assert all(s["passed"] for s in compare_outputs(eager.run(feeds), out, 1e-2).values())
    reference = TorchEngine(net, "dann").run(feeds)
    budget = BUDGETS["bf16"]["per_call_rel_max_abs"]
    assert all(s["passed"] for s in compare_outputs(reference, out, budget).values())
    for o, s in zip(out.values(), spec.outputs):
        assert o.dtype == s.dtype and o.is_contiguous()
    # another batch size runs the same package (dynamic in the batch)
    compiled.run(spec.example_inputs(3, seed=1))
    assert len(compiled._forward.entries) == 1

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again: the cached package should have been loaded")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    again = TorchEngine(net, "dann", precision="bf16", compile=True, cache_dir=tmp_path)
    torch.testing.assert_close(again.run(feeds), out)
    (hit,) = again._forward.entries.values()
    assert not hit.built and hit.reason == "hit" and hit.path == entry.path
    assert again.describe()["compiled"] is True


def test_a_compiled_fp32_engine_takes_either_layout(tmp_path):
    """A package is compiled for its example's strides: a channels-last batch (the DANN folder loader's view)
    and an NCHW one give the eager module's outputs."""
    net, spec = small_net("dann"), get_spec("dann")
    feeds = spec.example_inputs(4, seed=0)
    compiled = TorchEngine(net, "dann", compile=True, cache_dir=tmp_path)
    reference = TorchEngine(net, "dann").run(feeds)
    channels_last = {k: v.contiguous(memory_format=torch.channels_last) for k, v in feeds.items()}
    for batch in (feeds, channels_last):
        assert all(s["passed"] for s in compare_outputs(reference, compiled.run(batch), 1e-4).values())
