"""End to end: `hw2rt ddim` / `interp` / `ddpm` on assignment-format checkpoints, and their bad input."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hw2rt.cli import main
from hw2rt.models import build_model


@pytest.fixture(scope="module")
def face_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("face")
    torch.manual_seed(0)
    net = build_model("face_unet", {"base": 32})
    with torch.no_grad():
        net.out[2].weight.mul_(0.1)  # a damped random model: a calm trajectory
    torch.save(net.state_dict(), root / "UNet.pt")  # the assignment's format: a plain state dict
    noise = root / "noise"
    noise.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(4):
        torch.save(torch.randn(1, 3, 32, 32, generator=g), noise / f"{i:02d}.pt")
    return root


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_ddim_writes_named_images_and_grades_them(face_files, tmp_path):
    out = tmp_path / "out"
    r = run("ddim", "--noise-dir", face_files / "noise", "--out", out, "--checkpoint", face_files / "UNet.pt",
            "--steps", "5", "--batch-size", "3")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png", "02.png", "03.png"]
    img = np.asarray(Image.open(out / "00.png"))
    assert img.shape == (32, 32, 3) and img.min() == 0 and img.max() == 255  # per-image min-max
    assert "images/s" in r.output
    # Graded against itself: MSE 0 per image, and the JSON beside the images says so.
    graded = run("ddim", "--noise-dir", face_files / "noise", "--out", tmp_path / "again", "--checkpoint",
                 face_files / "UNet.pt", "--steps", "5", "--gt-dir", out)
    assert graded.exit_code == 0, graded.output
    mse = json.loads((tmp_path / "again" / "mse.json").read_text())
    assert mse["mean"] == 0.0 and set(mse["per_image"]) == {"00", "01", "02", "03"}
    assert "mean MSE 0.0000" in graded.output


def test_ddim_eta_results_do_not_depend_on_batch_size(face_files, tmp_path):
    outs = []
    for bs in (1, 4):
        r = run("ddim", "--noise-dir", face_files / "noise", "--out", tmp_path / f"bs{bs}", "--checkpoint",
                face_files / "UNet.pt", "--steps", "4", "--eta", "0.7", "--batch-size", bs, "--seed", "3")
        assert r.exit_code == 0, r.output
        outs.append([np.asarray(Image.open(tmp_path / f"bs{bs}" / f"{i:02d}.png")) for i in range(4)])
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


def test_ddim_on_full_size_assignment_unet(tmp_path):
    torch.manual_seed(0)
    torch.save(build_model("face_unet").state_dict(), tmp_path / "UNet.pt")  # 427 entries, 113.7M parameters
    (tmp_path / "noise").mkdir()
    torch.save(torch.randn(1, 3, 32, 32, dtype=torch.float64), tmp_path / "noise" / "00.pt")
    r = run("ddim", "--noise-dir", tmp_path / "noise", "--out", tmp_path / "out",
            "--checkpoint", tmp_path / "UNet.pt", "--steps", "2")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "out" / "00.png").size == (32, 32)


def test_eta_grid_and_interp(face_files, tmp_path):
    r = run("ddim", "--noise-dir", face_files / "noise", "--out", tmp_path / "o",
            "--checkpoint", face_files / "UNet.pt", "--steps", "2", "--eta-grid", "0,0.5,1",
            "--grid", tmp_path / "grid.png")
    assert r.exit_code == 0, r.output
    pad = 2
    # 4 noises x 3 etas
    assert Image.open(tmp_path / "grid.png").size == (3 * (32 + pad) + pad, 4 * (32 + pad) + pad)
    r = run("interp", "--noise-dir", face_files / "noise", "--pair", "00,01", "--mode", "both", "--out",
            tmp_path / "interp.png", "--checkpoint", face_files / "UNet.pt", "--steps", "2")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "interp.png").size == (11 * (32 + pad) + pad, 2 * (32 + pad) + pad)


def test_ddpm_writes_ten_classes_grid_and_frames(tmp_path):
    torch.manual_seed(0)
    torch.save(build_model("digit_unet", {"n_feat": 16}).state_dict(), tmp_path / "digits.pt")
    r = run("ddpm", "--out", tmp_path / "out", "--checkpoint", tmp_path / "digits.pt", "--per-digit", "3",
            "--steps", "12", "--grid", tmp_path / "grid.png", "--frames", tmp_path / "frames.png",
            "--batch-size", "7")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"{d}_{i:03d}.png" for d in range(10) for i in range(1, 4))
    assert Image.open(tmp_path / "out" / "0_001.png").size == (28, 28)
    assert Image.open(tmp_path / "out" / "0_001.png").mode == "RGB"
    assert Image.open(tmp_path / "grid.png").size == (3 * 30 + 2, 10 * 30 + 2)  # rows = digits
    assert Image.open(tmp_path / "frames.png").size == (6 * 30 + 2, 30 + 2)  # six frames


@pytest.mark.parametrize("args, message", [
    (["--eta", "-0.5"], "--eta must be >= 0"),
    (["--steps", "1000"], "between 1 and 999"),
    (["--steps", "0"], "between 1 and 999"),
])
def test_ddim_bad_arguments_write_nothing(face_files, tmp_path, args, message):
    out = tmp_path / "out"
    r = run("ddim", "--noise-dir", face_files / "noise", "--out", out, "--checkpoint", face_files / "UNet.pt",
            *args)
    assert r.exit_code == 1 and message in r.output and r.output.strip().count("\n") == 0
    assert not out.exists()


def test_ddim_mismatched_noise_and_wrong_checkpoint(face_files, tmp_path):
    noise = tmp_path / "noise"
    noise.mkdir()
    torch.save(torch.randn(1, 3, 32, 32), noise / "00.pt")
    torch.save(torch.randn(1, 3, 64, 64), noise / "01.pt")
    r = run("ddim", "--noise-dir", noise, "--out", tmp_path / "out", "--checkpoint", face_files / "UNet.pt")
    assert r.exit_code == 1 and "01.pt" in r.output and "differs" in r.output
    torch.save(build_model("digit_classifier").state_dict(), tmp_path / "clf.pt")
    r = run("ddim", "--noise-dir", face_files / "noise", "--out", tmp_path / "out",
            "--checkpoint", tmp_path / "clf.pt")
    assert (r.exit_code == 1
            and "clf.pt: holds a digit_classifier checkpoint, but this needs a face_unet" in r.output)
    assert not (tmp_path / "out").exists()


def test_ddpm_fast_ddim_sampler(tmp_path):
    torch.manual_seed(0)
    torch.save(build_model("digit_unet", {"n_feat": 16}).state_dict(), tmp_path / "digits.pt")
    r = run("ddpm", "--out", tmp_path / "out", "--checkpoint", tmp_path / "digits.pt", "--per-digit", "1",
            "--sampler", "ddim", "--steps", "6", "--frames", tmp_path / "frames.png")
    assert r.exit_code == 0, r.output
    assert "ddim 6 steps of T=1000" in r.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 10
    assert Image.open(tmp_path / "frames.png").size == (6 * 30 + 2, 30 + 2)
    bad = run("ddpm", "--out", tmp_path / "o2", "--checkpoint", tmp_path / "digits.pt", "--sampler", "ddim",
              "--steps", "1001")
    assert bad.exit_code == 1 and "between 1 and T=1000" in bad.output and not (tmp_path / "o2").exists()


def test_ddpm_stochastic_ddim_is_seeded_per_image(tmp_path):
    """--eta 1 draws fresh noise each step from each image's own generator: the images do not depend on
    the batch layout, and they differ from the deterministic eta = 0 ones."""
    from hw2rt.io import read_image

    torch.manual_seed(0)
    torch.save(build_model("digit_unet", {"n_feat": 16}).state_dict(), tmp_path / "digits.pt")
    common = ["--checkpoint", tmp_path / "digits.pt", "--per-digit", "2", "--sampler", "ddim", "--steps", "5"]
    outs = {}
    for name, extra in (("a", ["--eta", "1", "--batch-size", "20"]),
                        ("b", ["--eta", "1", "--batch-size", "3"]), ("det", ["--eta", "0"])):
        r = run("ddpm", "--out", tmp_path / name, *common, *extra)
        assert r.exit_code == 0, r.output
        outs[name] = np.stack([read_image(p) for p in sorted((tmp_path / name).glob("*.png"))])
    assert "ddim 5 steps of T=1000, eta 0" in r.output and len(outs["a"]) == 20
    assert np.array_equal(outs["a"], outs["b"])
    assert not np.array_equal(outs["a"], outs["det"])
    bad = run("ddpm", "--out", tmp_path / "o2", "--checkpoint", tmp_path / "digits.pt", "--eta", "1")
    assert bad.exit_code == 1 and "--eta applies to --sampler ddim" in bad.output
    assert bad.output.strip().count("\n") == 0 and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("backend, precision, budget", [("ort", "fp32", 0.05), ("ort", "fp16", 0.3),
                                                       ("torch", "bf16", 0.3)])
def test_ddim_engines_give_the_torch_images(face_files, tmp_path, backend, precision, budget):
    """`hw2rt ddim --backend B --precision P` on an assignment-format UNet.pt: the torch fp32 images, within
    the parity budget of P."""
    from hw2rt.io import mse_255, read_image

    common = ["--noise-dir", face_files / "noise", "--checkpoint", face_files / "UNet.pt", "--steps", "10"]
    assert run("ddim", *common, "--out", tmp_path / "torch", "--backend", "torch").exit_code == 0
    r = run("ddim", *common, "--out", tmp_path / backend, "--backend", backend, "--precision", precision)
    assert r.exit_code == 0, r.output
    mses = [mse_255(read_image(tmp_path / "torch" / f"{i:02d}.png"),
                    read_image(tmp_path / backend / f"{i:02d}.png"))
            for i in range(4)]
    assert sum(mses) / len(mses) <= budget, mses


def test_bf16_is_torch_or_openvino_only(face_files, tmp_path):
    r = run("ddim", "--noise-dir", face_files / "noise", "--checkpoint", face_files / "UNet.pt",
            "--steps", "2", "--out", tmp_path / "out", "--backend", "ort", "--precision", "bf16")
    assert r.exit_code == 1 and r.output.strip().count("\n") == 0
    assert "bf16 runs on torch and openvino, not ort" in r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "unipc"])
def test_ddpm_few_step_solvers(tmp_path, sampler):
    """The solvers run the digit job: deterministic (no --eta), independent of the batch layout, frames from
    the starting noise on under six steps, x0 clipping switchable; the clipped digits stay in range."""
    from hw2rt.io import read_image

    torch.manual_seed(0)
    torch.save(build_model("digit_unet", {"n_feat": 16}).state_dict(), tmp_path / "digits.pt")
    common = ["--checkpoint", tmp_path / "digits.pt", "--per-digit", "2", "--sampler", sampler,
              "--steps", "5"]
    outs = {}
    for name, extra in (("a", ["--batch-size", "20", "--frames", tmp_path / "frames.png"]),
                        ("b", ["--batch-size", "3"]), ("noclip", ["--no-x0-clip"])):
        r = run("ddpm", "--out", tmp_path / name, *common, *extra)
        assert r.exit_code == 0, r.output
        outs[name] = np.stack([read_image(p) for p in sorted((tmp_path / name).glob("*.png"))])
    assert f"{sampler} 5 steps of T=1000, x0 clip off" in r.output and len(outs["a"]) == 20
    assert np.array_equal(outs["a"], outs["b"]) and not np.array_equal(outs["a"], outs["noclip"])
    assert Image.open(tmp_path / "frames.png").size == (6 * 30 + 2, 30 + 2)  # the noise and five steps
    r = run("ddpm", "--out", tmp_path / "three", *common[:-1], "3", "--frames", tmp_path / "f3.png")
    assert r.exit_code == 0 and Image.open(tmp_path / "f3.png").size == (4 * 30 + 2, 30 + 2)
    bad = run("ddpm", "--out", tmp_path / "o2", *common, "--eta", "1")
    assert bad.exit_code == 1 and "--eta applies to --sampler ddim" in bad.output
    assert not (tmp_path / "o2").exists()
    bad = run("ddpm", "--out", tmp_path / "o3", "--checkpoint", tmp_path / "digits.pt", "--x0-clip")
    assert bad.exit_code == 1 and "--x0-clip applies to" in bad.output and not (tmp_path / "o3").exists()


def test_interp_refuses_a_missing_pair_before_opening_the_engine(face_files, tmp_path, monkeypatch):
    import hw2rt.engines

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was opened before --pair was checked")

    monkeypatch.setattr(hw2rt.engines, "open_engine", no_engine)
    r = run("interp", "--noise-dir", face_files / "noise", "--pair", "00,zz", "--out", tmp_path / "i.png",
            "--checkpoint", face_files / "UNet.pt")
    assert r.exit_code == 1 and "zz.pt: no such noise file for --pair" in r.output, r.output
    assert not (tmp_path / "i.png").exists()
