"""Every bad input a one-line error before any work, across every command (docs/reliability.md promises it).

Each case runs one command in this process on a tiny world of the assignment's files and asserts: exit
status 1, nothing on stdout, stderr exactly one line (`Error: ...`, no traceback) naming the file or the
option, and no file or folder appearing or changing anywhere. Usage errors click reports itself (an option
out of its range, a missing argument) keep click's exit status 2 and usage block, as click does.
"""
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from hw2rt.cli import main
from hw2rt.errors import Hw2rtError
from hw2rt.models import build_model, get_spec


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The assignment's files, tiny: a face UNet.pt, noise, GT, digit and DANN checkpoints, digit images,
    plus the bad ones the cases need. `blocker` is a regular file for outputs to be put under."""
    w = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    face = build_model("face_unet", {"base": 32})
    torch.save(face.state_dict(), w / "UNet.pt")
    torch.save(build_model("digit_unet", {"n_feat": 16}).state_dict(), w / "digits.pt")
    dann = build_model("dann").state_dict()
    torch.save(dann, w / "dann.pt")
    for name, shape in (("noise", (1, 3, 32, 32)), ("noise33", (1, 3, 33, 33)), ("noise0", (1, 3, 0, 0))):
        (w / name).mkdir()
        for i in range(2):
            torch.save(torch.randn(shape), w / name / f"{i:02d}.pt")
    (w / "gt40").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(w / "gt40" / f"{i:02d}.png")
    (w / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.full((28, 28, 3), 40 * i, np.uint8)).save(w / "images" / f"{i}_{i:03d}.png")
    (w / "bomb").mkdir()
    Image.new("L", (13000, 13000)).save(w / "bomb" / "0_000.png")
    (w / "blocker").write_text("a regular file")
    (w / "a_folder").mkdir()
    torch.save({0: torch.zeros(1)}, w / "int_keys.pt")
    narrow = build_model("face_unet", {"base": 40, "norm_groups": 8})  # GroupNorm(32, 40) cannot be built
    torch.save(narrow.state_dict(), w / "base40.pt")
    torch.save({k: v.to(torch.int32) if v.is_floating_point() else v for k, v in face.state_dict().items()},
               w / "int32_face.pt")
    torch.save({k: (v > 0) if k == "label_classifier.layers.0.weight" else v for k, v in dann.items()},
               w / "bool_dann.pt")
    tensors = {k: v.contiguous() for k, v in face.state_dict().items()}
    save_file(tensors, str(w / "unknown.safetensors"), metadata={"hw2rt_model": "banana"})
    save_file(tensors, str(w / "notjson.safetensors"),
              metadata={"hw2rt_model": "face_unet", "hw2rt_config": "{x"})
    save_file(tensors, str(w / "base0.safetensors"),
              metadata={"hw2rt_model": "face_unet", "hw2rt_config": json.dumps({"base": 0})})
    (w / "model.onnx").write_bytes(b"\x08\x08" + b"\x00" * 64)
    (w / "cache_file").write_text("not a folder")
    return w


def snapshot(root):
    return {p.relative_to(root): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def run(args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


# (id, arguments (with {w} for the world), what the one line must say, environment)
FACE = ["ddim", "--noise-dir", "{w}/noise", "--checkpoint", "{w}/UNet.pt", "--steps", "2",
        "--backend", "torch"]
DIGITS = ["ddpm", "--checkpoint", "{w}/digits.pt", "--per-digit", "1", "--sampler", "ddim", "--steps", "2",
          "--backend", "torch"]
CLASSIFY = ["classify", "--images", "{w}/images", "--checkpoint", "{w}/dann.pt", "--backend", "torch"]
INTERP = ["interp", "--noise-dir", "{w}/noise", "--checkpoint", "{w}/UNet.pt", "--steps", "2",
          "--backend", "torch"]
CASES = [
    # 1. outputs that cannot be written: refused before any work
    ("ddim --out under a file", [*FACE, "--out", "{w}/blocker/sub"],
     "--out {w}/blocker/sub: {w}/blocker is a file"),
    ("ddim --grid under a file",
     [*FACE, "--out", "{w}/new", "--eta-grid", "0,1", "--grid", "{w}/blocker/g.png"],
     "--grid {w}/blocker/g.png"),
    ("ddpm --out under a file", [*DIGITS, "--out", "{w}/blocker/d"], "--out {w}/blocker/d"),
    ("ddpm --grid under a file", [*DIGITS, "--out", "{w}/new", "--grid", "{w}/blocker/g.png"], "--grid"),
    ("ddpm --frames under a file", [*DIGITS, "--out", "{w}/new", "--frames", "{w}/blocker/f.png"],
     "--frames"),
    ("classify --out under a file", [*CLASSIFY, "--out", "{w}/blocker/p.csv"], "--out {w}/blocker/p.csv"),
    ("classify --features under a file",
     [*CLASSIFY, "--out", "{w}/new.csv", "--features", "{w}/blocker/f.npz"], "--features"),
    ("interp --out under a file", [*INTERP, "--out", "{w}/blocker/i.png"], "--out {w}/blocker/i.png"),
    ("export --out under a file", ["export", "--model", "dann", "--checkpoint", "{w}/dann.pt", "--out",
                                   "{w}/blocker/m.onnx"], "--out {w}/blocker/m.onnx"),
    ("parity --json under a file", ["parity", "--model", "dann", "--no-e2e", "--json", "{w}/blocker/r.json"],
     "--json {w}/blocker/r.json"),
    ("bench --json under a file", ["bench", "--quick", "--json", "{w}/blocker/b.json"], "--json"),
    ("tsne --out under a file", ["tsne", "--checkpoint", "{w}/dann.pt", "--source", "{w}/a_folder",
                                 "--target", "{w}/a_folder", "--out", "{w}/blocker/t"],
     "--out {w}/blocker/t_digit.png"),
    ("train --out under a file", ["train", "ddpm", "--data", "{w}/a_folder", "--out", "{w}/blocker/run"],
     "--out {w}/blocker/run"),
    # 2. an unusable cache
    ("HW2RT_CACHE is a file", [*FACE[:-1], "ort", "--out", "{w}/new"], "HW2RT_CACHE is not a folder",
     {"HW2RT_CACHE": "{w}/cache_file"}),
    # 3. noise the network cannot take
    ("noise 33x33", [*FACE[:2], "{w}/noise33", *FACE[3:], "--out", "{w}/new"],
     "{w}/noise33: height 33 cannot be served: the face_unet needs it a positive multiple of 32"),
    ("noise 0x0", [*FACE[:2], "{w}/noise0", *FACE[3:], "--out", "{w}/new"], "height 0 cannot be served"),
    ("interp noise 33x33", [*INTERP[:2], "{w}/noise33", *INTERP[3:], "--out", "{w}/i.png"], "height 33"),
    # 4. bad checkpoint contents
    ("integer keys", ["inspect", "{w}/int_keys.pt"], "{w}/int_keys.pt: not a state dict: its keys must be"),
    ("config the channels cannot serve", ["inspect", "{w}/base40.pt"], "{w}/base40.pt: config"),
    ("metadata names an unknown model", ["inspect", "{w}/unknown.safetensors"], "unknown model 'banana'"),
    ("config metadata not JSON", ["inspect", "{w}/notjson.safetensors"], "is not a JSON object"),
    ("config base 0", [*FACE, "--checkpoint", "{w}/base0.safetensors", "--out", "{w}/new"],
     "base0.safetensors: config"),
    # 5. weights of the wrong dtype
    ("int32 face UNet", ["inspect", "{w}/int32_face.pt"], "not floating point: "),
    ("bool DANN weight", [*CLASSIFY, "--checkpoint", "{w}/bool_dann.pt", "--out", "{w}/p.csv"],
     "not floating point: label_classifier.layers.0.weight: bool"),
    # 6. options
    ("--eta inf", [*FACE, "--out", "{w}/new", "--eta", "inf"], "--eta must be >= 0 and finite (got inf)"),
    ("--eta nan", [*FACE, "--out", "{w}/new", "--eta", "nan"], "--eta must be >= 0 and finite"),
    ("--seed 10^23 (faces)", [*FACE, "--out", "{w}/new", "--seed", str(10**23)], f"--seed {10**23}: must be"),
    ("--seed 10^23 (digits)", [*DIGITS, "--out", "{w}/new", "--seed", str(10**23)], "--seed"),
    ("--device banana", [*FACE, "--out", "{w}/new", "--device", "banana"], "unknown device 'banana'"),
    ("fp16 on openvino", [*FACE[:-1], "openvino", "--precision", "fp16", "--out", "{w}/new"],
     "the openvino backend runs fp32, bf16, int8, not fp16"),
    ("openvino on cuda", [*CLASSIFY[:-1], "openvino", "--device", "cuda", "--out", "{w}/p.csv"],
     "the openvino backend runs on the CPU only, not cuda"),
    ("--w nan", [*DIGITS, "--out", "{w}/new", "--w", "nan"], "--w nan: must be a finite number"),
    ("export --opset 99", ["export", "--model", "dann", "--checkpoint", "{w}/dann.pt", "--out", "{w}/m.onnx",
                           "--opset", "99"], "opset 99: hw2rt exports opsets 18 to"),
    ("--eta-grid ,", [*FACE, "--out", "{w}/new", "--eta-grid", ",", "--grid", "{w}/g.png"],
     "--eta-grid ',': expected comma-separated numbers"),
    # 7. images
    ("decompression bomb", ["eval-digits", "--images", "{w}/bomb"], "{w}/bomb/0_000.png: refused"),
    ("classify a bomb", [*CLASSIFY[:2], "{w}/bomb", *CLASSIFY[3:], "--out", "{w}/p.csv"],
     "0_000.png: refused"),
    # 8. ground truth checked before sampling
    ("GT of the wrong size", [*FACE, "--out", "{w}/new", "--gt-dir", "{w}/gt40"],
     "{w}/gt40/00.png: size 40x40 differs from the noise's 32x32"),
    # 9. small lies
    ("export dann: which bundled one", ["export", "--model", "dann", "--out", "{w}/m.onnx"],
     "there are 2 bundled dann models: pass --checkpoint dann_svhn or dann_usps"),
    ("inspect an ONNX graph", ["inspect", "{w}/model.onnx"],
     "{w}/model.onnx: is an ONNX graph, not a checkpoint"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_any_work(world, case):
    _, args, message, *env = case
    def fill(text):
        return text.replace("{w}", str(world))

    before = snapshot(world)
    r = run([fill(a) for a in args], env={k: fill(v) for k, v in env[0].items()} if env else None)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1, (r.exit_code, r.output)
    assert r.stdout == "" and len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output and fill(message) in lines[0], lines
    assert snapshot(world) == before  # nothing written, nothing changed


USAGE = [  # click's own checks: exit status 2 and its usage block, nothing written
    ["ddpm", "--out", "{w}/new", "--per-digit", "0"],
    [*FACE, "--out", "{w}/blocker"],  # a folder option given a file
    [*CLASSIFY, "--out", "{w}/a_folder"],  # a file option given a folder
    ["data", "synth", "--out", "{w}/blocker"],
    ["demo", "--quick", "--out", "{w}/blocker"],
    ["ddim", "--out", "{w}/new"],  # a required option missing
]


@pytest.mark.parametrize("args", USAGE, ids=[" ".join(a[:1] + a[-2:]) for a in USAGE])
def test_click_usage_errors_keep_exit_status_2(world, args):
    before = snapshot(world)
    r = run([a.replace("{w}", str(world)) for a in args])
    assert r.exit_code == 2 and "Usage:" in r.output and "Traceback" not in r.output, r.output
    assert snapshot(world) == before


def test_an_unwritable_cache_builds_elsewhere_and_says_so(world, tmp_path):
    """A cache whose folders cannot be made (here: a file where the kind's folder goes) is not an error: the
    graph is built in a temporary folder, used, and a one-line warning says it was not cached."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "onnx").write_text("in the way")
    out = tmp_path / "out"
    args = [*(a.replace("{w}", str(world)) for a in FACE[:-1]), "ort", "--out", out]
    r = run(args, env={"HW2RT_CACHE": str(cache)})
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["00.png", "01.png"]
    assert "cannot be written" in r.stderr and "not cached" in r.stderr
    assert sorted(p.name for p in cache.iterdir()) == ["onnx"]  # the cache itself was left alone


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    from hw2rt.io import read_image

    wide = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(wide).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    assert (img == 255).mean() < 0.01 and img[16, 0, 0] == round(16 * 32 * 64 / 257)


def test_the_api_refuses_an_unknown_model_with_hw2rt_error():
    from hw2rt.engines import open_engine

    with pytest.raises(Hw2rtError, match="unknown model 'no_such_model'"):
        open_engine("no_such_model")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(-1, 96), w=st.integers(-1, 96))
def test_the_spec_refuses_exactly_the_sizes_the_face_unet_cannot_take(h, w):
    spec = get_spec("face_unet")
    fits = h > 0 and w > 0 and h % 32 == 0 and w % 32 == 0
    try:
        spec.check_dims({"height": h, "width": w}, "noise")
    except Hw2rtError as exc:
        assert not fits and "cannot be served" in str(exc)
    else:
        assert fits


@settings(max_examples=60, deadline=None)
@given(eta=st.floats(allow_nan=True, allow_infinity=True), w=st.floats(allow_nan=True, allow_infinity=True))
def test_float_options_are_refused_exactly_when_not_usable(eta, w):
    from hw2rt.runtime.jobs import digit_plan

    usable = math.isfinite(eta) and eta >= 0 and math.isfinite(w)
    try:
        digit_plan("ddim", 10, eta, w)
    except Hw2rtError as exc:
        assert not usable and ("--eta" in str(exc) or "--w" in str(exc))
    else:
        assert usable


def test_an_output_in_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    """(As root every folder is writable, so the permission is simulated.)"""
    from hw2rt import io

    monkeypatch.setattr(io.os, "access", lambda path, mode: False)
    with pytest.raises(Hw2rtError, match=f"--out {tmp_path}/x.csv: {tmp_path} is not writable"):
        io.check_output(tmp_path / "x.csv", "--out")


def test_a_read_only_cache_builds_elsewhere(tmp_path, monkeypatch, capsys):
    from hw2rt.engines import cache

    calls = []
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    entry = cache.get_or_build("onnx", "x", {"k": 1}, "a.bin", lambda p: calls.append(p.write_bytes(b"ok")),
                               cache_dir=tmp_path / "cache")
    assert entry.path.read_bytes() == b"ok" and entry.built and "not cached" in entry.reason
    assert not entry.path.is_relative_to(tmp_path) and "not cached" in capsys.readouterr().err
