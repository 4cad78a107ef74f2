"""fp32 islands by name (export/fp16.py) and the island search (hw2rt/verify/islands.py)."""
import json

import onnx
import pytest
from click.testing import CliRunner

from hw2rt.cli import main
from hw2rt.engines.torch import fp32_islands
from hw2rt.errors import Hw2rtError
from hw2rt.export import export_onnx, read_metadata
from hw2rt.export.fp16 import to_fp16
from hw2rt.verify import islands
from hw2rt.verify.islands import format_search, search_islands, shrink
from hw2rt.verify.parity import SMALL, random_model

FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def input_types(path, op):
    """The dtype of the first input of every `op` node of the graph."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return [types[n.input[0]] for n in model.graph.node if n.op_type == op]


@pytest.fixture(scope="module")
def face():
    return random_model("face_unet", SMALL["face_unet"][0])


def test_the_default_islands_named_explicitly_give_the_default_graph(face, tmp_path):
    default = export_onnx(face, "face_unet", tmp_path / "default.onnx", precision="fp16")
    named = json.loads(read_metadata(default)["islands"])
    assert named[0] == "time.0" and sum(n.endswith(".softmax") for n in named) == 6  # six attention blocks
    assert sum(n.endswith("norm") or ".norm" in n or n == "out.0" for n in named) == len(named) - 7
    explicit = export_onnx(face, "face_unet", tmp_path / "explicit.onnx", precision="fp16", islands=named)
    a, b = onnx.load(str(default)), onnx.load(str(explicit))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()


def test_an_island_set_decides_what_runs_in_fp32(face, tmp_path):
    none = export_onnx(face, "face_unet", tmp_path / "none.onnx", precision="fp16", islands=[])
    assert input_types(none, "Sin") == [HALF]  # even the model's own t.float() stays fp16 without an island
    assert set(input_types(none, "InstanceNormalization")) == set(input_types(none, "Softmax")) == {HALF}
    assert json.loads(read_metadata(none)["islands"]) == []
    some = export_onnx(face, "face_unet", tmp_path / "some.onnx", precision="fp16",
                       islands=["time.0", "down14.attention.softmax", "out.0"])
    assert input_types(some, "Sin") == [FLOAT]
    assert sorted(input_types(some, "Softmax")) == [FLOAT] + [HALF] * 5  # one of six softmax sites
    assert input_types(some, "InstanceNormalization").count(FLOAT) == 1  # the output GroupNorm only
    with pytest.raises(Hw2rtError, match=r"no such module"):
        to_fp16(face, ["time.9"])
    with pytest.raises(Hw2rtError, match="fp16 graphs"):
        export_onnx(face, "face_unet", tmp_path / "x.onnx", precision="fp32", islands=[])


def test_shrink_finds_the_islands_that_are_needed_with_few_trials():
    needed, calls = {"b", "g"}, []

    def passes(rest):
        calls.append(rest)
        return needed <= set(rest)

    items = list("abcdefghijklmnop")
    assert shrink(items, passes) == ["b", "g"]
    assert len(calls) < 40  # bisection: far fewer than the 16 * 15 / 2 of trying every removal order
    assert shrink(items, lambda rest: True) == []


def test_search_trials_and_writes_the_chosen_graph(tmp_path):
    net = random_model("digit_unet", {"n_feat": 16})
    small = {"images": 2, "steps": 3}
    easy = search_islands("digit_unet", net, tmp_path / "easy.onnx", budget=1e6, log=lambda _: None, **small)
    assert easy["chosen"] == [] and easy["met_budget"] and [t["why"] for t in easy["trials"]] == [
        "no islands", "the default islands"]
    assert json.loads(read_metadata(tmp_path / "easy.onnx")["islands"]) == []
    assert easy["default_islands"] == ["up0.1", "out.1"] and "out.3" in easy["candidates"]
    fid = easy["cpu_fidelity"]
    assert fid["ort_fp16_image_mse_255"] == easy["trials"][0]["image_mse_255"]
    assert set(fid["per_call_rel_max_abs"]) == {"ort_fp16_vs_fp32", "torch_fp16_vs_fp32",
                                                "ort_fp16_vs_torch_fp16"}
    impossible = search_islands("digit_unet", net, tmp_path / "hard.onnx", budget=1e-12, log=lambda _: None,
                                **small)
    assert not impossible["met_budget"] and impossible["chosen"] == impossible["candidates"]
    whys = [t["why"] for t in impossible["trials"]]
    assert whys == ["no islands", "the default islands", "every candidate"]
    assert all(t["image_mse_255"] > 0 and t["per_call_ms"] > 0 for t in impossible["trials"])
    written = json.loads(read_metadata(tmp_path / "hard.onnx")["islands"])
    assert sorted(written) == sorted(impossible["candidates"])
    json.dumps(impossible)


def test_cli_search_islands(tmp_path, monkeypatch):
    monkeypatch.setitem(islands.SEARCH_LOOPS, "digit_unet", {**islands.SEARCH_LOOPS["digit_unet"],
                                                             "images": 2, "steps": 2})
    out = tmp_path / "digit.onnx"
    result = CliRunner().invoke(main, ["export", "--model", "digit_unet", "--precision", "fp16",
                                       "--search-islands", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "digit.islands.json").read_text())
    assert report["model"] == "digit_unet" and report["steps"] == 2 and report["trials"]
    assert sorted(json.loads(read_metadata(out)["islands"])) == sorted(report["chosen"])
    assert "island search digit_unet" in result.output and "| trial |" in result.output
    for args, message in ((["--model", "dann", "--precision", "fp16"], "face_unet or digit_unet"),
                          (["--model", "digit_unet"], "--precision fp32")):
        result = CliRunner().invoke(main, ["export", *args, "--search-islands", "--out",
                                           str(tmp_path / "x.onnx")])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "x.onnx").exists()


def owners(net):
    return [n for n, m in net.named_modules() if any(True for _ in m.parameters(recurse=False))]


def test_bf16_candidates_group_every_layer_once_by_role_and_size_most_expensive_first(face):
    groups = islands.weight_groups(face, "face_unet", {"height": 32, "width": 32})
    assert groups["time"] == ["time"] and groups["down1"] == ["down1"]
    first = next(iter(groups))
    assert first.startswith("*.resblocks.conv") and first.endswith(" 32x32")  # full-size 3x3 convs cost most
    assert "down2.resblocks.conv1" in groups["*.resblocks.conv1 32x32"]
    assert groups["*.resblocks.norm1 1x1"]  # the 1x1 level of a 32x32 input
    members = [m for names in groups.values() for m in names]
    for name in owners(face):
        assert sum(name == m or name.startswith(m + ".") for m in members) == 1, name


def test_bf16_search_trials_the_torch_module_the_engine_runs(monkeypatch):
    net = random_model("face_unet", {"base": 8, "norm_groups": 4})
    small = {"images": 2, "steps": 3, "dims": {"height": 32, "width": 32}, "log": lambda _: None}
    easy = search_islands("face_unet", net, precision="bf16", budget=1e6, **small)
    assert easy["precision"] == "bf16" and easy["out"] is None and easy["cpu_fidelity"] is None
    assert easy["chosen"] == easy["islands"] == [] and easy["met_budget"]
    assert [t["why"] for t in easy["trials"]] == ["no islands", "the default islands"]
    assert easy["default_islands"] == list(fp32_islands("face_unet", "bf16"))
    assert all(t["per_call_ms"] > 0 and t["fp32_ms"] > 0 for t in easy["trials"])
    assert "island search face_unet bf16" in format_search(easy)
    # three candidates, the timestep embedding not among them: even all three cannot reach fp32's images
    real = islands.weight_groups(net, "face_unet", small["dims"])
    rest = [n for label, names in real.items() for n in names if label not in ("time", "down1")]
    monkeypatch.setattr(islands, "weight_groups", lambda *_: {"rest": rest, "down1": ["down1"]})
    hard = search_islands("face_unet", net, precision="bf16", budget=1e-12, **small)
    assert not hard["met_budget"] and hard["chosen"] == ["rest", "down1"]
    assert sorted(hard["islands"]) == sorted(rest + ["down1"])
    assert [t["why"] for t in hard["trials"]] == ["no islands", "the default islands", "every candidate"]
    assert hard["trials"][2]["per_call_rel"] < easy["trials"][0]["per_call_rel"]
    json.dumps(hard)
    with pytest.raises(ValueError, match="fp16 or bf16"):
        search_islands("face_unet", net, precision="int8", **small)


def test_cli_search_islands_bf16_writes_the_report_to_out(tmp_path, monkeypatch):
    monkeypatch.setitem(islands.SEARCH_LOOPS, "digit_unet", {**islands.SEARCH_LOOPS["digit_unet"],
                                                             "images": 2, "steps": 2})
    out = tmp_path / "digit.bf16.json"
    result = CliRunner().invoke(main, ["export", "--model", "digit_unet", "--precision", "bf16",
                                       "--search-islands", "--out", str(out), "--budget", "1e6"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["precision"] == "bf16" and report["chosen"] == [] and report["groups"]
    assert "island search digit_unet bf16" in result.output
    for args, message in ((["--search-islands", "--report", str(tmp_path / "r.json")],
                           "writes its report to --out"), ([], "there is no bf16 graph")):
        result = CliRunner().invoke(main, ["export", "--model", "digit_unet", "--precision", "bf16", *args,
                                           "--out", str(tmp_path / "x.json")])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not (tmp_path / "x.json").exists()
