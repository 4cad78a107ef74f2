"""`hw2rt classify`: the assignment's DANN inference CSV, grayscale and odd sizes, features."""
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hw2rt.cli import main
from hw2rt.io import read_labels_csv
from hw2rt.models.dann import DANN


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    torch.manual_seed(0)
    net = DANN().eval()
    torch.save(net.state_dict(), root / "dann.pt")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(images / f"{i:05d}.png")
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(images / "gray.png")
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(images / "big.png")
    return root, net


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_classify_writes_one_row_per_image(folder, tmp_path, backend):
    root, net = folder
    r = CliRunner().invoke(main, ["classify", "--images", str(root / "images"),
                                  "--out", str(tmp_path / "pred.csv"),
                                  "--checkpoint", str(root / "dann.pt"), "--backend", backend,
                                  "--features", str(tmp_path / "f.npz"), "--batch-size", "3"])
    assert r.exit_code == 0, r.output
    rows = read_labels_csv(tmp_path / "pred.csv")
    assert sorted(n for n, _ in rows) == sorted(p.name for p in (root / "images").iterdir())
    assert "1 resized to 28x28" in r.output
    # The labels are the torch reference's argmax on the same [0,1] inputs (grayscale repeated).
    from hw2rt.data.images import read_images
    paths = sorted((root / "images").iterdir())
    images, _ = read_images(paths, 28)
    x = images.float() / 255.0
    with torch.no_grad():
        expected = net(x)[0].argmax(1).tolist()
    assert [y for _, y in rows] == expected
    f = np.load(tmp_path / "f.npz")
    assert f["features"].shape == (8, 512) and list(f["names"]) == [p.name for p in paths]


def test_classify_empty_folder_and_corrupt_image(folder, tmp_path):
    root, _ = folder
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["classify", "--images", str(tmp_path / "empty"),
                                  "--out", str(tmp_path / "p.csv"), "--checkpoint", str(root / "dann.pt")])
    assert r.exit_code == 1 and "no images" in r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00000.png").write_bytes(b"\x89PNG broken")
    r = CliRunner().invoke(main, ["classify", "--images", str(bad), "--out", str(tmp_path / "p.csv"),
                                  "--checkpoint", str(root / "dann.pt")])
    assert r.exit_code == 1 and "00000.png" in r.output
    assert not (tmp_path / "p.csv").exists()
