"""Engines over exported graphs: the artefact cache, bad artefacts and requests, feeds."""
import importlib.util
import json

import onnx
import onnxruntime as ort
import pytest
import torch

import hw2rt.engines.weights as engines_pkg  # where cached_onnx calls export_onnx
from hw2rt.checkpoints import file_sha256, save_checkpoint
from hw2rt.engines import OrtEngine, TorchEngine, check_feeds, open_engine
from hw2rt.engines.openvino import OpenVinoEngine
from hw2rt.errors import Hw2rtError
from hw2rt.models import get_spec
from hw2rt.verify.parity import run_parity
from tests.helpers import small_net

# --- cache ----------------------------------------------------------------------------------------------

@pytest.fixture
def count_exports(monkeypatch):
    calls = []
    real = engines_pkg.export_onnx

    def counting(*args, **kwargs):
        calls.append(kwargs.get("precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(engines_pkg, "export_onnx", counting)
    return calls


def test_cache_hit_then_corrupt_byte_rebuilds(tmp_path, count_exports):
    net = small_net("digit_unet")
    ckpt = tmp_path / "digits.safetensors"
    save_checkpoint(net, "digit_unet", ckpt, half=False)
    cache = tmp_path / "cache"

    first = open_engine("digit_unet", ckpt, backend="ort", cache_dir=cache)
    entry = first.cache_entry
    assert entry.built and count_exports == ["fp32"]
    manifest = json.loads(entry.manifest.read_text())
    assert manifest["sha256"] == file_sha256(entry.path)
    assert manifest["parts"]["source_sha256"] == file_sha256(ckpt)
    assert manifest["parts"]["precision"] == "fp32" and manifest["parts"]["opset"] >= 18
    mtime = entry.path.stat().st_mtime_ns
    feeds = get_spec("digit_unet").example_inputs(2)
    before = first.run(feeds)["eps"]

    second = open_engine("digit_unet", ckpt, backend="ort", cache_dir=cache)
    assert not second.cache_entry.built and second.cache_entry.reason == "hit"
    assert count_exports == ["fp32"] and entry.path.stat().st_mtime_ns == mtime

    data = bytearray(entry.path.read_bytes())  # flip one byte inside the weights, same size
    data[len(data) // 2] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    third = open_engine("digit_unet", ckpt, backend="ort", cache_dir=cache)
    assert third.cache_entry.built and "hash" in third.cache_entry.reason
    assert count_exports == ["fp32", "fp32"]
    assert file_sha256(entry.path) == json.loads(entry.manifest.read_text())["sha256"]
    torch.testing.assert_close(third.run(feeds)["eps"], before, rtol=0, atol=0)

    fp16 = open_engine("digit_unet", ckpt, backend="ort", precision="fp16", cache_dir=cache)
    assert fp16.cache_entry.built and fp16.cache_entry.path != entry.path and fp16.precision == "fp16"


def test_cache_stale_manifest_and_env_var(tmp_path, monkeypatch, count_exports):
    monkeypatch.setenv("HW2RT_CACHE", str(tmp_path / "envcache"))
    net = small_net("digit_classifier")
    entry = open_engine("digit_classifier", net, backend="ort").cache_entry
    assert entry.path.is_relative_to(tmp_path / "envcache")
    m = json.loads(entry.manifest.read_text())
    m["key"] = "0" * 64  # a manifest that belongs to another key
    entry.manifest.write_text(json.dumps(m))
    again = open_engine("digit_classifier", net, backend="ort").cache_entry
    assert again.built and again.reason == "stale manifest" and len(count_exports) == 2
    with torch.no_grad():  # other weights: another key, another entry
        net.fc3.bias.add_(1.0)
    other = open_engine("digit_classifier", net, backend="ort").cache_entry
    assert other.built and other.key != entry.key


# --- engines: bad artefacts and requests ----------------------------------------------------------

def test_foreign_truncated_missing_and_wrong_model_onnx(tmp_path, exported):
    foreign = tmp_path / "foreign.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(foreign))
    with pytest.raises(Hw2rtError, match="foreign.onnx: not an hw2rt export"):
        OrtEngine(foreign)

    _, good = exported("digit_classifier")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(Hw2rtError, match="truncated.onnx: not a loadable ONNX model"):
        open_engine("digit_classifier", truncated, backend="ort")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(Hw2rtError, match="garbage.onnx"):
        OrtEngine(garbage)
    with pytest.raises(Hw2rtError, match="missing.onnx: ONNX file not found"):
        OrtEngine(tmp_path / "missing.onnx")
    with pytest.raises(Hw2rtError, match="holds a digit_classifier graph, but this needs a dann"):
        open_engine("dann", good, backend="ort")
    with pytest.raises(Hw2rtError, match="is an fp32 graph, but fp16 was asked for"):
        open_engine("digit_classifier", good, backend="ort", precision="fp16")
    with pytest.raises(Hw2rtError, match="runs on the ort backend"):
        open_engine("digit_classifier", good, backend="torch")
    with pytest.raises(Hw2rtError, match="holds no torch module"):
        run_parity("digit_classifier", good)  # the torch reference needs the checkpoint
    engine = open_engine("digit_classifier", good)  # auto on the CPU: ort, precision from the file
    assert (engine.backend == "ort" and engine.precision == "fp32"
            and engine.metadata["model"] == "digit_classifier")


def test_requests_a_backend_cannot_serve():
    net = small_net("digit_classifier")
    with pytest.raises(Hw2rtError, match="fp16 only on CUDA"):
        open_engine("digit_classifier", net, backend="torch", precision="fp16")
    with pytest.raises(Hw2rtError, match="fp16 only on CUDA"):
        TorchEngine(net, "digit_classifier", precision="fp16", device="cpu")
    with pytest.raises(Hw2rtError, match="unknown backend"):
        open_engine("digit_classifier", net, backend="tensorflow")
    with pytest.raises(Hw2rtError, match="unknown precision"):
        open_engine("digit_classifier", net, backend="torch", precision="int4")
    with pytest.raises(Hw2rtError, match="runs on the ort .or trt, openvino. backend, not torch"):
        open_engine("digit_classifier", net, backend="torch", precision="int8")
    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(Hw2rtError, match="TensorRT"):
            open_engine("digit_classifier", net, backend="trt")
    if not torch.cuda.is_available():
        with pytest.raises(Hw2rtError, match="cuda"):
            open_engine("digit_classifier", net, backend="torch", device="cuda")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(Hw2rtError, match="onnxruntime-gpu"):
            open_engine("digit_classifier", net, backend="ort", device="cuda", cache_dir=None)


# --- engines: feeds -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_engines(exported):
    net, path = exported("digit_unet")
    return {"torch": TorchEngine(net, "digit_unet"), "ort": OrtEngine(path, model="digit_unet"),
            "openvino": OpenVinoEngine(path, model="digit_unet", threads=1)}


@pytest.mark.parametrize("backend", ["torch", "ort", "openvino"])
def test_bad_feeds_are_clear_errors(digit_engines, backend):
    engine = digit_engines[backend]
    good = get_spec("digit_unet").example_inputs(2)
    cases = [
        ({k: v for k, v in good.items() if k != "c"}, r"missing 'c'.*inputs are x, c, t, mask"),
        ({**good, "extra": good["t"]}, r"unexpected 'extra'"),
        ({**good, "x": good["x"].double()}, r"'x' has dtype torch.float64, expected torch.float32"),
        ({**good, "c": good["c"].int()}, r"'c' has dtype torch.int32, expected torch.int64"),
        ({**good, "x": good["x"][0]}, r"'x' has shape \[3, 28, 28\], expected \[batch, 3, 28, 28\]"),
        ({**good, "x": torch.zeros(2, 3, 27, 28)}, r"'x' has shape \[2, 3, 27, 28\]"),
        ({**good, "t": torch.rand(3)}, r"'t' has batch 3 but 'x' has 2"),
        ({**good, "mask": [0.0, 1.0]}, r"'mask' must be a torch tensor or numpy array"),
    ]
    for feeds, message in cases:
        with pytest.raises(Hw2rtError, match=message):
            engine.run(feeds)
    with pytest.raises(Hw2rtError, match="expected 4 inputs"):
        engine(good["x"], good["c"])
    with pytest.raises(Hw2rtError, match="feeds must be a dict"):
        engine.run([good["x"]])


def test_numpy_feeds_positional_call_and_max_batch(digit_engines, exported):
    good = get_spec("digit_unet").example_inputs(2)
    for engine in digit_engines.values():
        as_torch = engine.run(good)["eps"]
        as_numpy = engine.run({k: v.numpy() for k, v in good.items()})["eps"]
        assert isinstance(as_numpy, torch.Tensor) and as_numpy.device == engine.device
        torch.testing.assert_close(as_numpy, as_torch, rtol=0, atol=0)
        torch.testing.assert_close(engine(*good.values()), as_torch, rtol=0, atol=0)
    _, path = exported("digit_unet")
    small = OrtEngine(path, max_batch=2)
    small.run(good)
    with pytest.raises(Hw2rtError, match="batch 3 exceeds this engine's max_batch 2"):
        small.run(get_spec("digit_unet").example_inputs(3))
    small.close()
    with pytest.raises(Hw2rtError, match="closed"):
        small.run(good)


@pytest.mark.parametrize("engine_class", [OrtEngine, OpenVinoEngine])
def test_face_size_error_names_the_engine(exported, engine_class):
    _, path = exported("face_unet")
    engine = engine_class(path)
    bad = get_spec("face_unet").example_inputs(1, height=40, width=40)  # not a multiple of 32
    # refused by the spec's constraint before the runtime sees it
    message = rf"face_unet \({engine.backend} .*height 40 cannot be served.*multiple of 32"
    with pytest.raises(Hw2rtError, match=message):
        engine.run(bad)


def test_check_feeds_returns_spec_order():
    spec = get_spec("digit_unet")
    feeds = spec.example_inputs(1)
    shuffled = {k: feeds[k] for k in reversed(list(feeds))}
    assert list(check_feeds(spec.inputs, shuffled)) == ["x", "c", "t", "mask"]
