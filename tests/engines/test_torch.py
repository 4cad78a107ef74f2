"""The torch backend's reduced-precision policy (torch's CPU kernels stand in for CUDA's)."""

import types

import pytest
import torch

from hw2rt.engines import open_engine
from hw2rt.engines.torch import FP32_ISLANDS, TorchEngine, reduced_precision_module, same_device
from hw2rt.errors import Hw2rtError
from hw2rt.models import get_spec
from hw2rt.verify.parity import BUDGETS, random_model

# --- the torch backend's reduced-precision policy (CPU stand-in for CUDA) -------------------------

def test_reduced_precision_module_keeps_islands_fp32_and_the_original_intact():
    net = random_model("face_unet", {"base": 32, "norm_groups": 8})
    inv_freq = net.time[0].inv_freq.clone()
    half = reduced_precision_module(net, "face_unet", "fp16")
    assert FP32_ISLANDS["fp16"]["face_unet"] == ("time",)
    assert half.down1.weight.dtype == torch.float16
    assert half.time[0].inv_freq.dtype == torch.float32 and torch.equal(half.time[0].inv_freq, inv_freq)
    assert half.time[1].weight.dtype == torch.float32
    assert net.down1.weight.dtype == torch.float32 and net.training is False



def test_a_tensor_keeps_the_dtype_of_the_module_that_made_it():
    """bf16 modules cast what they read down; an island reads fp32 and hands fp32 on: with the first conv
    and the output head as islands, the network's input reaches `down1` unrounded and eps leaves `out` in
    fp32, so down1's output is exactly the fp32 module's."""
    net = random_model("face_unet", {"base": 16, "norm_groups": 8})
    feeds = get_spec("face_unet").example_inputs(2, height=32, width=32)
    engine = TorchEngine(net, "face_unet", precision="bf16", islands=["time", "down1", "out"])
    assert engine.describe()["islands"] == ["time", "down1", "out"]
    seen = {}

    def record(name):
        def hook(_module, args, out):
            seen[name] = (args[0].dtype, out.dtype)
        return hook

    for name in ("down1", "down2.resblocks.conv1", "out", "time"):
        engine.module.get_submodule(name).register_forward_hook(record(name))
    eps = engine.run(feeds)["eps"]
    assert seen["down1"] == (torch.float32, torch.float32) and seen["out"][1] == torch.float32
    assert seen["down2.resblocks.conv1"] == (torch.bfloat16, torch.bfloat16)
    assert seen["time"][1] == torch.float32
    assert engine.module.down1.weight.dtype == torch.float32
    assert engine.module.down2.resblocks.conv1.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        fp32_down1 = net.down1(feeds["x"])
        bf16_down1 = engine.module.down1(feeds["x"].contiguous(memory_format=torch.channels_last))
    assert torch.equal(fp32_down1, bf16_down1)
    ref = TorchEngine(net, "face_unet").run(feeds)["eps"]
    assert (eps - ref).abs().max() <= BUDGETS["bf16"]["per_call_rel_max_abs"] * ref.abs().max()
    # every module an island: the fp32 network, whatever the layout
    whole = TorchEngine(net, "face_unet", precision="bf16", islands=[n for n, _ in net.named_children()])
    assert torch.allclose(whole.run(feeds)["eps"], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    with pytest.raises(Hw2rtError, match="no such module"):
        TorchEngine(net, "face_unet", precision="bf16", islands=["down99"])
    with pytest.raises(Hw2rtError, match="reduced precision"):
        TorchEngine(net, "face_unet", islands=["time"])


@pytest.mark.parametrize("model,config", [("face_unet", {"base": 32, "norm_groups": 8}),
                                          ("digit_unet", {"n_feat": 8}),
                                          ("dann", {}), ("digit_classifier", {})])
def test_torch_reduced_precision_matches_the_reference(model, config):
    """The fp16 module the torch backend runs on CUDA, run here by torch's CPU fp16 kernels, and bf16
    behind the bucketing wrapper: within their per-call budgets of the fp32 reference."""
    net = random_model(model, config)
    spec = get_spec(model)
    dims = {"height": 32, "width": 32} if model == "face_unet" else {}
    feeds = spec.example_inputs(3, **dims)
    ref = TorchEngine(net, model).run(feeds)
    half = reduced_precision_module(net, model, "fp16")
    with torch.inference_mode():
        out = half(*[v.half() if v.is_floating_point() else v for v in feeds.values()])
    fp16 = dict(zip([s.name for s in spec.outputs], out if isinstance(out, tuple) else (out,)))
    bf16_engine = open_engine(model, net, backend="torch", precision="bf16", graphs=True, max_batch=2)
    assert bf16_engine.describe()["graphs"] and bf16_engine.describe()["buckets"] == [1, 2]
    bf16 = bf16_engine.run(feeds)  # 3 rows: split into buckets of 2 and 1
    for s in spec.outputs:
        assert bf16[s.name].dtype == torch.float32 and bf16[s.name].is_contiguous()
        scale = ref[s.name].abs().max()
        assert ((fp16[s.name].float() - ref[s.name]).abs().max()
                <= BUDGETS["fp16"]["per_call_rel_max_abs"] * scale)
        assert (bf16[s.name] - ref[s.name]).abs().max() <= BUDGETS["bf16"]["per_call_rel_max_abs"] * scale




def test_memory_format_is_a_per_device_choice_and_both_layouts_agree():
    """channels-last by default on the CPU, NCHW by default on CUDA (torch's CUDA GroupNorm is NCHW
    only); either can be asked for, the same numbers come out, and a third name is refused."""
    from hw2rt.engines.torch import memory_format_for

    assert memory_format_for(torch.device("cpu")) == "channels_last"
    assert memory_format_for(torch.device("cuda", 0)) == "contiguous"
    assert memory_format_for(torch.device("cuda"), "channels_last") == "channels_last"
    net = random_model("face_unet", {"base": 32, "norm_groups": 8})
    feeds = get_spec("face_unet").example_inputs(2, height=32, width=32)
    outs = {}
    for layout in ("channels_last", "contiguous"):
        engine = open_engine("face_unet", net, backend="torch", precision="bf16", memory_format=layout)
        assert engine.describe()["memory_format"] == layout
        weight = engine.module.down2.resblocks.conv1.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
        outs[layout] = engine.run(feeds)["eps"]
    assert torch.allclose(outs["channels_last"], outs["contiguous"], atol=2e-2, rtol=0)
    with pytest.raises(Hw2rtError, match="unknown memory format"):
        open_engine("face_unet", net, backend="torch", precision="bf16", memory_format="nhwc")
    with pytest.raises(Hw2rtError, match="applies to the torch backend"):
        open_engine("face_unet", net, backend="ort", memory_format="contiguous")


def test_same_device_fills_in_the_current_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device("cuda", torch.device("cuda", 1)) and same_device(torch.device("cuda:1"), "cuda")
    assert not same_device("cuda", "cuda:0") and not same_device("cuda:0", "cpu")
    assert same_device("cpu", torch.device("cpu"))


def test_a_module_already_on_the_engine_device_is_not_copied(monkeypatch):
    """A module on cuda:0 serves a "cuda" engine as it is: no deep copy (455 MB for the face UNet)."""
    import hw2rt.engines.torch as torch_engine

    class OnGpu(torch.nn.Module):  # parameters that report cuda:0, as a module moved to the GPU does
        def parameters(self, recurse=True):
            yield types.SimpleNamespace(device=torch.device("cuda", 0))

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch_engine, "usable_device", lambda device: torch.device(device))
    net = OnGpu()
    engine = TorchEngine(net, "dann", device="cuda")
    assert engine.module is net
