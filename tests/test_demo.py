"""`hw2rt demo --quick`: every stage runs and the report shows every figure."""
import json

from click.testing import CliRunner

from hw2rt.cli import main


def test_demo_quick_writes_report_with_every_figure(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--quick", "--out", str(tmp_path / "demo"), "--threads", "1"])
    assert r.exit_code == 0, r.output
    report = (tmp_path / "demo" / "report.html").read_text()
    for title in ("eta grid", "interpolation", "digits (rows 0-9)", "reverse process", "Parity", "Accuracy",
                  "generated digits (grader)", "DANN on usps-like test", "DANN on svhn-like test"):
        assert title in report
    assert report.count("data:image/png;base64,") == 10 + 4  # ten faces, eta grid, interp, digit grid, frames
    summary = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert all(p["passed"] for p in summary["parity"])
    assert set(summary["accuracy"]) == {"generated digits (grader)", "DANN on usps-like test", "DANN on svhn-like test"}
    assert len(list((tmp_path / "demo" / "digits").glob("*.png"))) == 20
