"""The command line: help, usage errors, one-line errors with exit status 1."""
import torch
from click.testing import CliRunner

from hw2rt.cli import main
from hw2rt.models import build_model


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("inspect", "ddim", "ddpm", "interp", "data", "classify", "export", "parity", "demo",
                    "train", "eval-digits", "tsne", "bench"):
        assert command in result.output


def test_every_engine_command_defaults_to_auto_and_offers_the_vocabulary():
    """One vocabulary (hw2rt.options) behind every engine command's --backend / --precision."""
    from hw2rt import options

    for command in ("ddim", "interp", "ddpm", "classify", "parity"):
        out = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
        assert "--backend [" + "|".join(options.BACKENDS) + "]" in out, command
        assert "--precision [" + "|".join((*options.PRECISIONS, "auto")) + "]" in out, command
        backend_help = out[out.index("--backend"):out.index("--precision")]
        assert "default: auto" in backend_help and "the fastest measured" in backend_help, command


def test_engine_commands_leave_the_precision_to_open_engine(monkeypatch, tmp_path):
    """No --precision: the command passes None, so `open_engine` picks (fp16 where auto chose a CUDA device,
    else fp32): a GPU user's plain command gets the fp16 path the GPU check measures, not fp32."""
    from hw2rt import engines
    from hw2rt.engines.auto import choose

    seen = []

    def fake_open_engine(model, source, **kw):
        seen.append(kw["precision"])
        raise SystemExit(0)

    monkeypatch.setattr(engines, "open_engine", fake_open_engine)
    CliRunner().invoke(main, ["ddpm", "--out", str(tmp_path / "d"), "--per-digit", "1"])
    assert seen == [None]
    assert choose("digit_unet", None, torch.device("cuda")).precision == "fp16"
    assert choose("digit_unet", None, torch.device("cpu")).precision == "fp32"


def test_usage_errors():
    runner = CliRunner()
    assert runner.invoke(main, ["no-such-command"]).exit_code == 2
    assert runner.invoke(main, ["inspect"]).exit_code == 2  # missing argument
    assert runner.invoke(main, ["inspect", "x", "--bogus"]).exit_code == 2


def test_inspect_and_one_line_error(tmp_path):
    torch.save({"state_dict": build_model("digit_classifier").state_dict()}, tmp_path / "Classifier.pth")
    runner = CliRunner()
    ok = runner.invoke(main, ["inspect", str(tmp_path / "Classifier.pth")])
    assert ok.exit_code == 0 and '"model": "digit_classifier"' in ok.output
    bad = runner.invoke(main, ["inspect", str(tmp_path / "Classifier.pth"), "--model", "face_unet"])
    assert bad.exit_code == 1
    assert bad.output.strip().count("\n") == 0 and "Classifier.pth" in bad.output
