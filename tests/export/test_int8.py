"""int8 graphs: calibration recorded from the model's own loop, QDQ quantization, the engine and its cache."""
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from hw2rt.cli import main
from hw2rt.engines import OrtEngine, TorchEngine, open_engine
from hw2rt.errors import Hw2rtError
from hw2rt.export import export_onnx, read_metadata
from hw2rt.export import int8 as int8_module
from hw2rt.export.int8 import (
    KEEP_FP32,
    _check_weight_range,
    export_int8,
    kept_nodes,
    quantize_int8,
    weight_range,
)
from hw2rt.models import get_spec
from hw2rt.runtime import calibration
from hw2rt.runtime.calibration import Recorder, calibration_recipe, record_calibration
from hw2rt.verify.parity import BUDGETS, SMALL, compare_outputs, random_model

FAST_DIGITS = {**calibration.RECIPES["digit_unet"], "steps": 4, "per_digit": 1, "every": 2}


@pytest.fixture
def fast_recipes(monkeypatch):
    monkeypatch.setitem(calibration.RECIPES, "digit_unet", FAST_DIGITS)
    monkeypatch.setitem(calibration.RECIPES, "face_unet", {**calibration.RECIPES["face_unet"], "steps": 3,
                                                            "images": 2, "size": 32, "every": 1})


@pytest.fixture(scope="module")
def digit_net():
    return random_model("digit_unet", {"n_feat": 16})


def test_calibration_records_every_kth_call_of_the_guided_loop(fast_recipes, digit_net):
    feeds = record_calibration(TorchEngine(digit_net, "digit_unet"), calibration_recipe("digit_unet"))
    # 4 DDIM steps, every 2nd call kept, two seeds: 4 batches of both guidance halves of 10 digits
    assert len(feeds) == 4 and all(f["x"].shape == (20, 3, 28, 28) for f in feeds)
    assert all(set(f["mask"].tolist()) == {0.0, 1.0} and sorted(set(f["c"].tolist())) == list(range(10))
               for f in feeds)
    assert len({float(f["t"][0]) for f in feeds[:2]}) == 2  # different steps
    face = record_calibration(TorchEngine(random_model("face_unet", SMALL["face_unet"][0]), "face_unet"),
                              calibration_recipe("face_unet"))
    assert len(face) == 3 and face[0]["x"].shape == (2, 3, 32, 32) and face[0]["t"].dtype == torch.int64


def test_calibration_runs_the_loop_its_recipe_names(monkeypatch, digit_net):
    """A recipe may name any digit loop: a few-step solver's calls, at its timesteps, are what is recorded."""
    from hw2rt.runtime.schedules import DIGIT

    monkeypatch.setitem(calibration.RECIPES, "digit_unet",
                        {**FAST_DIGITS, "loop": "digit-unipc", "eta": 0.0, "steps": 3, "every": 1})
    feeds = record_calibration(TorchEngine(digit_net, "digit_unet"), calibration_recipe("digit_unet"))
    assert len(feeds) == 3 * len(FAST_DIGITS["seeds"])  # one call per step and seed: no corrector call
    assert [round(float(f["t"][0]) * DIGIT.T) for f in feeds[:3]] == DIGIT.timesteps(3)


def test_recorder_is_an_engine_that_forwards(digit_net):
    ref = TorchEngine(digit_net, "digit_unet")
    rec = Recorder(ref, every=3)
    feeds = get_spec("digit_unet").example_inputs(2, 0)
    for _ in range(7):
        out = rec.run(feeds)
    assert rec.calls == 7 and len(rec.feeds) == 3 and torch.equal(out["eps"], ref.run(feeds)["eps"])
    assert rec.feeds[0]["x"] is not feeds["x"] and torch.equal(rec.feeds[0]["x"], feeds["x"])


def test_the_int8_graph_is_qdq_with_the_sensitive_nodes_fp32(fast_recipes, digit_net, tmp_path):
    path = export_int8(digit_net, "digit_unet", tmp_path / "int8.onnx")
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    meta = read_metadata(path)
    int8 = json.loads(meta["int8"])
    assert meta["precision"] == "int8" and meta["model"] == "digit_unet"
    assert int8["method"] == "percentile" and int8["keep_fp32"] == list(KEEP_FP32["digit_unet"])
    assert int8["calibration"]["steps"] == 4 and int8["calibration_batches"] == 4
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}

    def weight_source(node_name):
        node = next(n for n in model.graph.node if n.name == node_name)
        w = node.input[1]
        return "initializer" if w in inits else producer[w].op_type

    assert weight_source("/init_conv/conv1/conv1.0/Conv") == "initializer"  # kept fp32
    assert weight_source("/out/out.3/Conv") == "initializer"
    assert weight_source("/down1/model/model.0/conv1/conv1.0/Conv") == "DequantizeLinear"  # int8 weights
    points = {i.name: i.data_type for i in model.graph.initializer}
    activation_points = {points[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert activation_points == {onnx.TensorProto.UINT8} and int8["target"] == "ort"
    kept = kept_nodes(model, KEEP_FP32["digit_unet"])
    assert any(n.startswith("/timeembed1/") for n in kept) and int8["fp32_nodes"] > 10
    engine = OrtEngine(path, threads=1)
    assert engine.precision == "int8"
    feeds = get_spec("digit_unet").example_inputs(4, 0)
    stats = compare_outputs(TorchEngine(digit_net, "digit_unet").run(feeds), engine.run(feeds), 1.0)["eps"]
    assert 1e-4 < stats["required_rtol"] <= BUDGETS["int8"]["per_call_rel_max_abs"] and stats["cosine"] > 0.99


def test_every_calibration_method_and_refusals(fast_recipes, digit_net, tmp_path):
    fp32 = export_onnx(digit_net, "digit_unet", tmp_path / "fp32.onnx")
    feeds = record_calibration(TorchEngine(digit_net, "digit_unet"), calibration_recipe("digit_unet"))
    for method in ("minmax", "entropy"):
        out = quantize_int8(fp32, tmp_path / f"{method}.onnx", feeds, method=method, keep_fp32=())
        assert json.loads(read_metadata(out)["int8"])["method"] == method
        assert json.loads(read_metadata(out)["int8"])["fp32_nodes"] == 0
    with pytest.raises(Hw2rtError, match="calibration method"):
        quantize_int8(fp32, tmp_path / "x.onnx", feeds, method="mse")
    with pytest.raises(Hw2rtError, match="at least one"):
        quantize_int8(fp32, tmp_path / "x.onnx", [])
    fp16 = export_onnx(digit_net, "digit_unet", tmp_path / "fp16.onnx", precision="fp16")
    with pytest.raises(Hw2rtError, match="fp32 export"):
        quantize_int8(fp16, tmp_path / "x.onnx", feeds)
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(Hw2rtError, match="images of the target domain"):
        calibration_recipe("dann")


def _conv_weights(model) -> list:
    """The int8 weight tensors of `model`'s quantized convolutions, as [output channel, input channel,
    taps] (Conv weights are OIHW, ConvTranspose IOHW)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    deq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    weights = []
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in deq:
            w = numpy_helper.to_array(inits[deq[n.input[1]].input[0]]).astype(np.int32)
            w = w if n.op_type == "Conv" else w.transpose(1, 0, 2, 3)
            weights.append(w.reshape(w.shape[0], w.shape[1], -1))
    return weights


@pytest.mark.parametrize("machine, caps, saturates", [
    ("x86_64", {"avx2": True, "avx512_vnni": False, "avx_vnni": False}, True),  # Zen 3
    ("x86_64", {"avx2": True, "avx512_vnni": False, "avx_vnni": True}, False),  # Alder Lake, Zen 5
    ("AMD64", {"avx2": True, "avx512_vnni": True, "avx_vnni": False}, False),  # Cascade Lake and later
    ("aarch64", {}, False),  # dot-product instructions sum in int32
])
def test_which_cpus_saturate_int8_pair_sums(monkeypatch, machine, caps, saturates):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert int8_module.cpu_saturates_int8() is saturates
    assert weight_range("ort") == (64 if saturates else 127) and weight_range("trt") == 127


def test_ort_weights_cannot_saturate_a_cpu_without_vnni(fast_recipes, digit_net, tmp_path, monkeypatch):
    fp32 = export_onnx(digit_net, "digit_unet", tmp_path / "fp32.onnx")
    feeds = record_calibration(TorchEngine(digit_net, "digit_unet"), calibration_recipe("digit_unet"))
    monkeypatch.setattr(int8_module, "cpu_saturates_int8", lambda: True)
    reduced = quantize_int8(fp32, tmp_path / "ort.onnx", feeds)
    trt = quantize_int8(fp32, tmp_path / "trt.onnx", feeds, target="trt")
    monkeypatch.setattr(int8_module, "cpu_saturates_int8", lambda: False)
    full = quantize_int8(fp32, tmp_path / "full.onnx", feeds)
    for path, top in ((reduced, 64), (trt, 127), (full, 127)):
        assert json.loads(read_metadata(path)["int8"])["weight_range"] == top
        weights = _conv_weights(onnx.load(str(path)))
        assert len(weights) > 5
        # per output channel symmetric: every channel's largest weight sits at the end of the range
        assert all((np.abs(w).max(axis=(1, 2)) == top).all() for w in weights)

    # vpmaddubsw (AVX2) adds the u8 x s8 products of two adjacent input channels into a saturating int16:
    # the reduced graph's worst pair cannot pass 32767, the full-range graph's can
    def worst_pair(path):
        return max(int((np.abs(w[:, 0:-1:2]) + np.abs(w[:, 1::2])).max()) * 255
                   for w in _conv_weights(onnx.load(str(path))))

    assert worst_pair(reduced) <= 32767 < worst_pair(full)
    # a full-range graph opened on such a CPU says so; the reduced one does not
    monkeypatch.setattr(int8_module, "cpu_saturates_int8", lambda: True)
    with pytest.warns(UserWarning, match=r"full.onnx: int8 weights span \[-127, 127\] and this CPU has no"):
        OrtEngine(full, threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OrtEngine(reduced, threads=1)
    with pytest.raises(Hw2rtError, match="weight range 100"):
        quantize_int8(fp32, tmp_path / "x.onnx", feeds, weights=100)
    graph = onnx.load(str(reduced))
    doctored = next(i for i in graph.graph.initializer
                    if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4)
    values = onnx.numpy_helper.to_array(doctored).copy()
    values.flat[0] = 100
    doctored.CopyFrom(onnx.numpy_helper.from_array(values, doctored.name))
    with pytest.raises(Hw2rtError, match=f"x.onnx: int8 weight {doctored.name} reaches 100, over the range"):
        _check_weight_range(graph, 64, "x.onnx")


def test_classifier_calibration_is_keyed_by_the_folder(tmp_path):
    from hw2rt.data.synth import synthesize

    root = tmp_path / "hw2_data"
    synthesize(root, seed=0, sizes={"mnistm": 10, "usps": 40, "svhn": 10, "faces": 1}, progress=False)
    usps, svhn = root / "digits" / "usps" / "data", root / "digits" / "svhn" / "data"
    a, b = calibration_recipe("dann", usps), calibration_recipe("dann", svhn)
    assert a["images"] == 40 and a["sha256"] != b["sha256"] and a["folder"] == str(usps)
    feeds = record_calibration(TorchEngine(random_model("dann"), "dann"), a)
    assert [len(f["x"]) for f in feeds] == [40]  # one batch of up to 64


def test_a_folder_whose_count_64_does_not_divide_calibrates_in_equal_batches(tmp_path):
    """100 images were batches of 64 and 36, which ONNX Runtime's percentile calibrator could not stack (a
    ValueError from inside it): the batches are now one size, every image used, and the graph builds."""
    from PIL import Image

    folder = tmp_path / "target"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(100):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    net = random_model("dann")
    feeds = record_calibration(TorchEngine(net, "dann"), calibration_recipe("dann", folder))
    assert [len(f["x"]) for f in feeds] == [50, 50]
    engine = open_engine("dann", net, backend="ort", precision="int8", calibration_images=folder,
                         cache_dir=tmp_path / "cache")
    assert engine.precision == "int8"
    assert engine.run({"x": torch.rand(3, 3, 28, 28)})["log_probs"].shape == (3, 10)


def test_the_engine_cache_keys_int8_by_its_calibration(fast_recipes, digit_net, tmp_path, monkeypatch):
    def int8():
        return open_engine("digit_unet", digit_net, backend="ort", precision="int8", cache_dir=tmp_path,
                           threads=1)

    first, again = int8(), int8()
    assert first.cache_entry.built and not again.cache_entry.built
    assert again.cache_entry.path == first.cache_entry.path
    monkeypatch.setitem(calibration.RECIPES, "digit_unet", {**FAST_DIGITS, "seeds": [7]})
    other = int8()
    assert other.cache_entry.built and other.cache_entry.key != first.cache_entry.key
    # a CPU without VNNI gets its own entry: the graph with [-64, 64] weights (export/int8.py)
    saturates = int8_module.cpu_saturates_int8()
    monkeypatch.setattr(int8_module, "cpu_saturates_int8", lambda: not saturates)
    elsewhere = int8()
    assert elsewhere.cache_entry.built and elsewhere.cache_entry.key != other.cache_entry.key
    meta = json.loads(read_metadata(elsewhere.cache_entry.path)["int8"])
    assert meta["weight_range"] == (127 if saturates else 64)
    with pytest.raises(Hw2rtError, match="ort .or trt"):
        open_engine("digit_unet", digit_net, backend="torch", precision="int8")


def test_cli_export_int8_and_refusals(fast_recipes, tmp_path):
    run = CliRunner().invoke
    out = tmp_path / "d8.onnx"
    result = run(main, ["export", "--model", "digit_unet", "--precision", "int8", "--calibration-method",
                        "minmax", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Finding optimal" not in result.output  # the quantizer's chatter stays off the console
    assert json.loads(read_metadata(out)["int8"])["method"] == "minmax"
    everything = tmp_path / "all.onnx"
    result = run(main, ["export", "--model", "digit_unet", "--precision", "int8", "--keep-fp32", "none",
                        "--out", str(everything)])
    assert result.exit_code == 0, result.output
    meta = json.loads(read_metadata(everything)["int8"])
    assert meta["keep_fp32"] == [] and meta["fp32_nodes"] == 0
    for args, message in ((["--model", "digit_unet", "--calibration-method", "minmax"],
                           "belong to"),
                          (["--model", "digit_unet", "--keep-fp32", "none"], "belong to"),
                          (["--model", "dann", "--checkpoint", "dann_usps", "--precision", "int8"],
                           "images of the target domain"),
                          (["--model", "digit_unet", "--precision", "int8", "--opset", "19"], "no --opset")):
        result = run(main, ["export", *args, "--out", str(tmp_path / "x.onnx")])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
    result = run(main, ["parity", "--model", "dann", "--precision", "int8"])
    assert result.exit_code != 0 and "give --task FOLDER" in result.output
