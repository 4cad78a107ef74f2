"""The data layer on bad input: noise files, images (the one decoder), CSVs, atomic writes: one-line
errors naming the file, nothing half-written."""

import numpy as np
import pytest
import torch
from PIL import Image

from hw2rt.data.images import RESIZE_FILTER, read_images
from hw2rt.data.layout import read_split
from hw2rt.errors import Hw2rtError
from hw2rt.io import (
    atomic_path,
    open_noise_dir,
    read_image,
    read_labels_csv,
    to_uint8_minmax,
    write_labels_csv,
    write_png,
)


def read_noise_dir(folder):
    """Every file of a noise folder, as a job's single process reads them."""
    noise = open_noise_dir(folder)
    return noise.names, noise.read(range(len(noise.files)))


def _save_noise(folder, name, x):
    folder.mkdir(exist_ok=True)
    torch.save(x, folder / name)


def test_noise_dir_reads_sorted_float32(tmp_path):
    _save_noise(tmp_path, "01.pt", torch.randn(3, 8, 8, dtype=torch.float64))
    _save_noise(tmp_path, "00.pt", torch.randn(1, 3, 8, 8, dtype=torch.float16))
    names, x = read_noise_dir(tmp_path)
    assert names == ["00", "01"] and x.shape == (2, 3, 8, 8) and x.dtype == torch.float32


@pytest.mark.parametrize("tensor, message", [
    (torch.randn(2, 3, 8, 8), "shape"),
    (torch.randn(1, 4, 8, 8), "shape"),
    (torch.randn(8, 8), "shape"),
    (torch.randint(0, 9, (1, 3, 8, 8)), "float"),
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.full((1, 3, 8, 8), float("inf")), "NaN or Inf"),
    ({"x": torch.randn(1, 3, 8, 8)}, "expected a tensor"),
])
def test_bad_noise_named_in_error(tmp_path, tensor, message):
    _save_noise(tmp_path, "00.pt", tensor)
    with pytest.raises(Hw2rtError, match=message) as err:
        read_noise_dir(tmp_path)
    assert "00.pt" in str(err.value) and "\n" not in str(err.value)


def test_noise_dir_missing_empty_and_mismatched(tmp_path):
    with pytest.raises(Hw2rtError, match="not found"):
        read_noise_dir(tmp_path / "nope")
    with pytest.raises(Hw2rtError, match="no .pt"):
        read_noise_dir(tmp_path)
    _save_noise(tmp_path, "00.pt", torch.randn(1, 3, 8, 8))
    _save_noise(tmp_path, "01.pt", torch.randn(1, 3, 16, 16))
    with pytest.raises(Hw2rtError, match="01.pt.*differs"):
        read_noise_dir(tmp_path)


def test_truncated_noise_file(tmp_path):
    _save_noise(tmp_path, "00.pt", torch.randn(1, 3, 8, 8))
    data = (tmp_path / "00.pt").read_bytes()
    (tmp_path / "00.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(Hw2rtError, match="00.pt"):
        read_noise_dir(tmp_path)


def test_png_minmax_normalisation_and_rounding(tmp_path):
    x = torch.tensor([-2.0, -1.0, 0.0, 2.0]).reshape(1, 2, 2).repeat(3, 1, 1)
    x[1] += 0.5  # one min and one max over all channels together
    img = to_uint8_minmax(x)
    lo, hi = x.min(), x.max()
    expected = torch.floor((x - lo) / (hi - lo) * 255 + 0.5).permute(1, 2, 0).numpy().astype(np.uint8)
    assert np.array_equal(img, expected) and img.min() == 0 and img.max() == 255
    write_png(img, tmp_path / "00.png")
    assert np.array_equal(read_image(tmp_path / "00.png"), img)
    assert [p.name for p in tmp_path.iterdir()] == ["00.png"]  # no temporary file left


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.csv") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_truncated_png(tmp_path):
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "c.png").write_bytes(b"not an image at all")
    assert read_image(tmp_path / "a.png").shape == (28, 28, 3)
    for name in ("b.png", "c.png"):
        with pytest.raises(Hw2rtError, match=name):
            read_image(tmp_path / name)


def test_grayscale_image_becomes_three_channels(tmp_path):
    Image.fromarray(np.full((28, 28), 77, np.uint8), mode="L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (28, 28, 3) and (img == 77).all()


def test_decoder_repeats_grayscale_to_three_channels(tmp_path):
    gray = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    images, resized = read_images([tmp_path / "g.png"], 28)
    assert images.shape == (1, 3, 28, 28) and images.dtype == torch.uint8 and resized == 0
    for c in range(3):
        assert np.array_equal(images[0, c].numpy(), gray)


def test_decoder_resizes_bilinearly_and_counts(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    Image.fromarray(big[:28, :28]).save(tmp_path / "ok.png")
    images, resized = read_images([tmp_path / "big.png", tmp_path / "ok.png"], 28)
    assert images.shape == (2, 3, 28, 28) and resized == 1
    assert RESIZE_FILTER == Image.BILINEAR  # the documented rule: the assignment transforms' filter
    expected = np.asarray(Image.fromarray(big).resize((28, 28), Image.BILINEAR))
    assert np.array_equal(images[0].permute(1, 2, 0).numpy(), expected)
    assert not np.array_equal(expected, np.asarray(Image.fromarray(big).resize((28, 28), Image.BICUBIC)))
    assert np.array_equal(images[1].permute(1, 2, 0).numpy(), big[:28, :28])  # 28x28 is left alone


def test_decoder_corrupt_file_is_one_line_error_naming_it(tmp_path):
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(Hw2rtError, match="broken.png: not a readable image") as info:
        read_images([tmp_path / "a.png", tmp_path / "broken.png"], 28)
    assert "\n" not in str(info.value)


def test_csv_without_header_or_naming_missing_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(data / "00000.png")
    (tmp_path / "train.csv").write_text("name,digit\n00000.png,3\n")
    with pytest.raises(Hw2rtError, match="train.csv.*image_name,label"):
        read_split(tmp_path, "train")
    (tmp_path / "train.csv").write_text("image_name,label\n00000.png,3\n00001.png,4\n")
    with pytest.raises(Hw2rtError, match="train.csv: names 00001.png"):
        read_split(tmp_path, "train")
    (tmp_path / "train.csv").write_text("image_name,label\n00000.png,three\n")
    with pytest.raises(Hw2rtError, match="line 2"):
        read_split(tmp_path, "train")


def test_labels_csv_round_trip(tmp_path):
    write_labels_csv(tmp_path / "out.csv", [("a.png", 3), ("b.png", 9)])
    assert (tmp_path / "out.csv").read_text() == "image_name,label\na.png,3\nb.png,9\n"
    assert read_labels_csv(tmp_path / "out.csv") == [("a.png", 3), ("b.png", 9)]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    write_labels_csv(tmp_path / "out.csv", [("a.png", 1)])
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask():
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask
