"""`hw2rt export` and `hw2rt parity` from the command line."""
import json

import onnx
import torch
from click.testing import CliRunner

from hw2rt.cli import main
from hw2rt.models import build_model
from hw2rt.verify import parity


def test_export_writes_checked_onnx_with_metadata(tmp_path):
    torch.save({"state_dict": build_model("digit_classifier").state_dict()}, tmp_path / "Classifier.pth")
    r = CliRunner().invoke(main, ["export", "--model", "digit_classifier",
                                  "--checkpoint", str(tmp_path / "Classifier.pth"),
                                  "--out", str(tmp_path / "clf.onnx")])
    assert r.exit_code == 0, r.output
    m = onnx.load(str(tmp_path / "clf.onnx"))
    onnx.checker.check_model(m)
    meta = {p.key: p.value for p in m.metadata_props}
    assert any("digit_classifier" in v for v in meta.values())
    assert [i.name for i in m.graph.input] == ["x"] and [o.name for o in m.graph.output] == ["logits"]


def test_export_refuses_a_checkpoint_of_another_model(tmp_path):
    torch.save(build_model("digit_classifier").state_dict(), tmp_path / "c.pt")
    r = CliRunner().invoke(main, ["export", "--model", "dann", "--checkpoint", str(tmp_path / "c.pt"),
                                  "--out", str(tmp_path / "x.onnx")])
    assert r.exit_code == 1 and "c.pt" in r.output and not (tmp_path / "x.onnx").exists()


def test_parity_passes_and_fails_on_budget(tmp_path, monkeypatch):
    args = ["parity", "--model", "dann", "--backend", "ort", "--json", str(tmp_path / "p.json")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "PASSED" in r.output and json.loads((tmp_path / "p.json").read_text())["passed"] is True
    strict = {k: {**v, "per_call_rel_max_abs": -1.0} for k, v in parity.BUDGETS.items()}
    monkeypatch.setattr(parity, "BUDGETS", strict)  # no engine meets a negative budget: exit status 1
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "FAILED" in r.output
