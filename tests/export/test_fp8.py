"""fp8 graphs: the symmetric int8 graph's calibration in E4M3 QDQ form, run on ONNX Runtime, cached."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper

from hw2rt.cli import main
from hw2rt.engines import OrtEngine, TorchEngine, open_engine
from hw2rt.errors import Hw2rtError
from hw2rt.export import export_onnx, read_metadata
from hw2rt.export.fp8 import E4M3_MAX, FP8_OPSET, export_fp8
from hw2rt.export.int8 import export_int8
from hw2rt.models import get_spec
from hw2rt.runtime import calibration
from hw2rt.verify.parity import BUDGETS, compare_outputs, random_model

FAST_DIGITS = {**calibration.RECIPES["digit_unet"], "steps": 4, "per_digit": 1, "every": 2}
WEIGHT = "down1.model.0.conv1.0.weight"  # a quantized Conv weight of the digit UNet


@pytest.fixture
def fast_recipes(monkeypatch):
    monkeypatch.setitem(calibration.RECIPES, "digit_unet", FAST_DIGITS)


@pytest.fixture(scope="module")
def digit_net():
    return random_model("digit_unet", {"n_feat": 16})


@pytest.fixture
def graphs(fast_recipes, digit_net, tmp_path):
    """(fp32, int8 trt, fp8) paths of one calibration."""
    fp32 = export_onnx(digit_net, "digit_unet", tmp_path / "fp32.onnx")
    int8 = export_int8(digit_net, "digit_unet", tmp_path / "int8.onnx", fp32_path=fp32, target="trt")
    fp8 = export_fp8(digit_net, "digit_unet", tmp_path / "fp8.onnx", fp32_path=fp32, int8_path=int8)
    return fp32, int8, fp8


def _inits(model):
    return {i.name: i for i in model.graph.initializer}


def _fp8_values(t):
    import ml_dtypes

    return np.frombuffer(t.raw_data, dtype=ml_dtypes.float8_e4m3fn).astype(np.float32).reshape(t.dims)


def test_the_fp8_graph_is_the_int8_calibration_in_e4m3(graphs):
    fp32, int8, fp8 = (onnx.load(str(p)) for p in graphs)
    a, b = _inits(int8), _inits(fp8)
    assert fp8.opset_import[0].version == FP8_OPSET
    quants = [n for n in fp8.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quants) == sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) > 10
    for n in quants:  # activations: amax / 448, the amax the int8 calibration chose (scale x 127)
        _, scale, zero_point = n.input
        assert b[zero_point].data_type == TensorProto.FLOAT8E4M3FN and not _fp8_values(b[zero_point]).any()
        np.testing.assert_allclose(numpy_helper.to_array(b[scale]) * E4M3_MAX,
                                   numpy_helper.to_array(a[scale]) * 127, rtol=1e-6)
    # weights: per output channel, requantized from fp32 (scale = the channel's amax / 448)
    w = numpy_helper.to_array(_inits(fp32)[WEIGHT])
    q, scale = b[WEIGHT + "_quantized"], numpy_helper.to_array(b[WEIGHT + "_scale"])
    assert q.data_type == TensorProto.FLOAT8E4M3FN and scale.shape == (w.shape[0],)
    np.testing.assert_allclose(scale * E4M3_MAX, np.abs(w).max(axis=(1, 2, 3)), rtol=1e-6)
    restored = _fp8_values(q) * scale[:, None, None, None]
    assert np.abs(restored - w).max() <= np.abs(w).max() / 16  # E4M3: 3 mantissa bits
    # biases and elementwise constants are the fp32 tensors; everything else is the int8 graph's
    assert not [t.name for t in fp8.graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.INT32)]
    qdq = ("QuantizeLinear", "DequantizeLinear")
    others = [n.name for n in int8.graph.node if n.op_type not in qdq]
    assert [n.name for n in fp8.graph.node if n.op_type not in qdq] == others
    onnx.checker.check_model(fp8)
    meta = read_metadata(fp8)
    assert meta["precision"] == "fp8" and json.loads(meta["int8"])["target"] == "trt"
    assert json.loads(meta["fp8"])["format"] == "float8e4m3fn"


def test_fp8_runs_on_ort_within_its_budget(graphs, digit_net):
    """ONNX Runtime's CPU provider drops a Relu ahead of an fp8 QuantizeLinear (a rewrite written for int8);
    with it the last block's Relu is gone and the output is off by the whole scale."""
    engine = OrtEngine(graphs[2], threads=1)
    assert engine.precision == "fp8"
    feeds = get_spec("digit_unet").example_inputs(4, 0)
    stats = compare_outputs(TorchEngine(digit_net, "digit_unet").run(feeds), engine.run(feeds), 1.0)["eps"]
    assert 1e-4 < stats["required_rtol"] <= BUDGETS["fp8"]["per_call_rel_max_abs"] and stats["cosine"] > 0.99


def test_fp8_is_rewritten_from_the_symmetric_int8_graph_only(fast_recipes, digit_net, tmp_path):
    fp32 = export_onnx(digit_net, "digit_unet", tmp_path / "fp32.onnx")
    uint8 = export_int8(digit_net, "digit_unet", tmp_path / "int8.onnx", fp32_path=fp32, target="ort")
    with pytest.raises(Hw2rtError, match="int8 graph of target trt"):
        export_fp8(digit_net, "digit_unet", tmp_path / "fp8.onnx", fp32_path=fp32, int8_path=uint8)
    assert not (tmp_path / "fp8.onnx").exists()


def test_the_engine_cache_builds_fp8_from_the_trt_int8_entry(fast_recipes, digit_net, tmp_path):
    def fp8():
        return open_engine("digit_unet", digit_net, backend="ort", precision="fp8", cache_dir=tmp_path,
                           threads=1)

    first, again = fp8(), fp8()
    assert first.precision == "fp8" and first.cache_entry.built and not again.cache_entry.built
    assert len(list((tmp_path / "onnx").glob("digit_unet-int8-trt-*/model.onnx"))) == 1
    with pytest.raises(Hw2rtError, match="ort .or trt"):
        open_engine("digit_unet", digit_net, backend="torch", precision="fp8")


def test_cli_export_fp8(fast_recipes, tmp_path):
    out = tmp_path / "d.onnx"
    result = CliRunner().invoke(main, ["export", "--model", "digit_unet", "--precision", "fp8",
                                       "--calibration-method", "minmax", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["precision"] == "fp8" and json.loads(meta["int8"])["method"] == "minmax"
