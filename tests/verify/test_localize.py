"""localize: the first node of a candidate graph whose output diverges from the fp32 reference graph."""
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from hw2rt.checkpoints import ASSETS, load_model
from hw2rt.export import export_onnx
from hw2rt.models import get_spec
from hw2rt.verify.localize import format_localize, localize
from hw2rt.verify.parity import BUDGETS, SMALL, random_model

FP32, FP16 = BUDGETS["fp32"]["per_call_rel_max_abs"], BUDGETS["fp16"]["per_call_rel_max_abs"]
BUNDLED_FACE = ASSETS / "face_unet.safetensors"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """graphs(kind, precision) -> path of one export (kind: digit, face = random SMALL, bundled_face)."""
    root, made = tmp_path_factory.mktemp("localize"), {}

    def get(kind, precision="fp32"):
        if (kind, precision) not in made:
            if kind == "digit":
                net, model = random_model("digit_unet", {"n_feat": 32}), "digit_unet"
            elif kind == "face":
                net, model = random_model("face_unet", SMALL["face_unet"][0]), "face_unet"
            else:
                net, model, _ = load_model(BUNDLED_FACE)
            path = root / f"{kind}.{precision}.onnx"
            made[kind, precision] = export_onnx(net, model, path, precision=precision)
        return made[kind, precision]

    return get


def digit_feeds():
    return get_spec("digit_unet").example_inputs(2, 1)


def face_feeds(batch=4, size=32):
    return get_spec("face_unet").example_inputs(batch, 3, height=size, width=size)


def conv_in_the_middle(model: onnx.ModelProto):
    """The middle Conv node of `model` and its weight initializer."""
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    conv = convs[len(convs) // 2]
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    assert sum(conv.input[1] in n.input for n in model.graph.node) == 1, "weight shared: pick another conv"
    return conv, init


def set_weight(init, array):
    init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), init.name))


def localize_a_perturbed_conv(graphs):
    """(reference graph, the Conv whose weights are x 1.1 in the candidate, localize's report)."""
    ref = onnx.load(str(graphs("digit")))
    cand = onnx.load(str(graphs("digit")))
    conv, init = conv_in_the_middle(cand)
    set_weight(init, numpy_helper.to_array(init) * 1.1)
    return ref, conv, localize(cand, ref, digit_feeds(), rel_budget=FP32, threads=1)


def assert_clean_before_first(report):
    first = report["first_divergent"]
    rows = report["nodes"]
    i = next(k for k, r in enumerate(rows) if r["node"] == first["node"])
    assert rows[i]["over"]
    assert not any(r["over"] for r in rows[:i]), [r["node"] for r in rows[:i] if r["over"]]


def test_identical_graphs_have_no_divergent_node(graphs):
    path = graphs("digit")
    report = localize(path, path, digit_feeds(), rel_budget=FP32, threads=1)
    assert report["first_divergent"] is None
    assert report["unmatched"] == 0 and report["compared"] > 100
    assert not any(r["over"] for r in report["nodes"]) and all(r["max_abs"] == 0 for r in report["nodes"])
    assert report["budget_rel"] == FP32 and report["candidate"] == report["reference"] == str(path)


def test_a_perturbed_conv_is_the_first_divergent_node(graphs):
    _, conv, report = localize_a_perturbed_conv(graphs)
    first = report["first_divergent"]
    assert first["node"] == conv.name and first["op"] == "Conv" and first["output"] == conv.output[0]
    assert first["rel"] > 1e-2 and math.isfinite(first["max_abs"])
    assert_clean_before_first(report)
    assert report["nodes"][0]["node"] != conv.name  # nodes before it were compared and passed


def test_a_nan_weight_is_caught_with_max_abs_inf(graphs):
    ref = onnx.load(str(graphs("digit")))
    cand = onnx.load(str(graphs("digit")))
    conv, init = conv_in_the_middle(cand)
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = np.nan
    set_weight(init, w)
    report = localize(cand, ref, digit_feeds(), rel_budget=FP32, threads=1)
    assert report["first_divergent"]["node"] == conv.name
    assert report["first_divergent"]["max_abs"] == math.inf
    assert_clean_before_first(report)


@pytest.mark.parametrize("kind, size", [("face", 64), ("bundled_face", 32)])
def test_fp16_face_unet_stays_within_the_fp16_budget_at_every_node(graphs, kind, size):
    # The random SMALL model (base 32, 32 groups) at 32x32 reaches its mid blocks at 1x1: GroupNorm over 4
    # values amplifies fp16's input rounding there to rel 2-10e-2. At 64x64 (16 values a group) it stays
    # near 5e-3; the bundled (trained, 8 groups) model stays near 2e-3 at 32x32.
    feeds = face_feeds(1, size)
    report = localize(graphs(kind, "fp16"), graphs(kind, "fp32"), feeds, rel_budget=FP16, threads=1)
    assert report["first_divergent"] is None, format_localize(report)
    casts = sum(n.op_type == "Cast" for n in onnx.load(str(graphs(kind, "fp16"))).graph.node)
    assert report["compared"] > 800 and report["unmatched"] <= casts
    assert max(r["rel"] for r in report["nodes"]) > 1e-4  # the interior really is fp16
    assert any(r["output"] == "eps" for r in report["nodes"])  # graph outputs are matched by name


def break_time_embedding(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fp16 graph with its timestep-embedding island computed in fp16 (a careless converter)."""
    island = [n for n in model.graph.node if n.name.startswith("/net/time/time.0/")]
    (cast,) = [n for n in island if n.op_type == "Cast"]
    (mul,) = [n for n in island if n.op_type == "Mul"]
    next(a for a in cast.attribute if a.name == "to").i = TensorProto.FLOAT16
    inits = {i.name: i for i in model.graph.initializer}
    (inv_freq,) = [inits[i] for i in mul.input if i in inits]
    half = numpy_helper.to_array(inv_freq).astype(np.float16)
    inv_freq.CopyFrom(numpy_helper.from_array(half, inv_freq.name))
    return model


def test_a_lost_fp32_time_embedding_island_is_named(graphs):
    broken = break_time_embedding(onnx.load(str(graphs("face", "fp16"))))
    onnx.checker.check_model(broken, full_check=True)
    ort.InferenceSession(broken.SerializeToString(), providers=["CPUExecutionProvider"])
    report = localize(broken, graphs("face", "fp32"), face_feeds(), rel_budget=FP16, threads=1)
    first = report["first_divergent"]
    assert first["node"] == "/net/time/time.0/Sin", format_localize(report)
    assert first["rel"] > 5e-2  # phase errors of ~0.16 rad (fp16 spacing 0.5 at 999): sin off by ~0.1
    assert_clean_before_first(report)
    mul = next(r for r in report["nodes"] if r["node"] == "/net/time/time.0/Mul")
    assert 1e-5 < mul["rel"] < FP16  # the phase itself is only rounded (fp16: ~5e-4 relative)


def test_format_localize_names_the_first_node_and_marks_it(graphs):
    ref, conv, report = localize_a_perturbed_conv(graphs)
    text = format_localize(report, limit=12)
    head, *table = text.splitlines()
    assert conv.name in head and "first divergent" in head
    (marked,) = [line for line in table if "<- first over budget" in line]
    assert marked.startswith(f"| {conv.name} | Conv |")
    assert any("FAIL" in line for line in table)  # later nodes inherit the error
    assert len([line for line in table if line.startswith("| /")]) <= 12
    clean = format_localize(localize(ref, ref, digit_feeds(), rel_budget=FP32, threads=1))
    assert clean.splitlines()[0].startswith("localize: no node over") and "<- first" not in clean


def test_cli_localizes_a_perturbed_export_of_the_bundled_model_and_exits_1(tmp_path):
    """`hw2rt parity --onnx CANDIDATE --localize`: the reference is the fp32 export of the same checkpoint."""
    from click.testing import CliRunner

    from hw2rt.cli import main

    good = tmp_path / "digit.onnx"
    run = CliRunner().invoke
    assert run(main, ["export", "--model", "digit_unet", "--out", str(good)]).exit_code == 0
    ok = run(main, ["parity", "--model", "digit_unet", "--onnx", str(good), "--localize", "--no-e2e",
                    "--threads", "1", "--json", str(tmp_path / "ok.json")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "ok.json").read_text())["localize"]["first_divergent"] is None
    model = onnx.load(str(good))
    conv, init = conv_in_the_middle(model)
    set_weight(init, numpy_helper.to_array(init) * 1.5)
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    out = tmp_path / "bad.json"
    result = run(main, ["parity", "--model", "digit_unet", "--onnx", str(bad), "--no-e2e", "--threads", "1",
                        "--json", str(out)])  # the per-call check fails, so it localizes unasked
    assert result.exit_code == 1, result.output
    loc = json.loads(out.read_text())["localize"]
    assert loc["first_divergent"]["node"] == conv.name and loc["first_divergent"]["op"] == "Conv"
    assert set(loc["first_divergent"]) == {"node", "op", "output", "max_abs", "rel"}
    assert f"first divergent node {conv.name}" in result.output


def test_cli_refuses_a_graph_of_other_weights(tmp_path):
    from click.testing import CliRunner

    from hw2rt.cli import main

    other = export_onnx(random_model("digit_unet", {"n_feat": 16}), "digit_unet", tmp_path / "other.onnx")
    result = CliRunner().invoke(main, ["parity", "--model", "digit_unet", "--onnx", str(other), "--no-e2e"])
    assert result.exit_code != 0
    assert "exported from other weights" in result.output and "other.onnx" in result.output
