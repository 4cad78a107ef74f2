"""Offline stand-ins (hw2rt.data.synth, hw2rt.data.sources): layout, formats, determinism, recipes."""
import csv
import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from hw2rt.data import sources, synth

SIZES = {"mnistm": 60, "usps": 60, "svhn": 60, "faces": 12}
SEED = 7


def build(out, seed=SEED, **kw):
    kw.setdefault("sizes", SIZES)
    return synth.synthesize(out, seed=seed, progress=False, **kw)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "hw2_data"
    summary = build(out)
    return out, summary


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_idx(path, magic, dims, payload, compress=False):
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + bytes(payload)
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    return path


def tiny_mnist_dir(directory, n=40, compress=False):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    sfx = ".gz" if compress else ""
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / f"train-images-idx3-ubyte{sfx}", 0x803, (n, 28, 28), images.tobytes(), compress)
    write_idx(directory / f"train-labels-idx1-ubyte{sfx}", 0x801, (n,), labels.tobytes(), compress)
    return images, labels


# ---------------------------------------------------------------- layout and formats


def test_layout_and_headers(tree):
    out, summary = tree
    assert (out / "README.txt").read_text().startswith(synth.README_MARKER)
    assert "STAND-IN" in (out / "README.txt").read_text()
    for domain in synth.DOMAINS:
        d = out / "digits" / domain
        assert (d / "data").is_dir()
        for split in synth.SPLITS:
            header, _ = read_csv(d / f"{split}.csv")
            assert header == ["image_name", "label"]
            assert (d / f"{split}.csv").read_bytes().startswith(b"image_name,label\n")
    assert sorted(p.name for p in (out / "face" / "noise").iterdir()) == [f"{i:02d}.pt" for i in range(10)]
    assert len(list((out / "face" / "faces").glob("*.png"))) == SIZES["faces"]
    assert not (out / "face" / "GT").exists() or not any((out / "face" / "GT").iterdir())
    assert summary["counts"]["mnistm"] == {"train": 42, "val": 9, "test": 9}
    # no temporary sibling left behind
    assert [p.name for p in out.parent.iterdir()] == ["hw2_data"]


def test_csv_rows_match_data_files(tree):
    out, _ = tree
    for domain in synth.DOMAINS:
        d = out / "digits" / domain
        files = {p.name for p in (d / "data").iterdir()}
        seen = []
        for split in synth.SPLITS:
            _, rows = read_csv(d / f"{split}.csv")
            for name, label in rows:
                assert "/" not in name and name in files, (domain, name)
                assert 0 <= int(label) <= 9
            seen += [name for name, _ in rows]
        assert sorted(seen) == sorted(files), domain  # every file in exactly one CSV
        assert len(seen) == len(set(seen)) == SIZES[domain]
        assert sorted(files) == [f"{i:05d}.png" for i in range(SIZES[domain])]


@pytest.mark.parametrize("domain,mode", [("mnistm", "RGB"), ("usps", "L"), ("svhn", "RGB")])
def test_image_sizes_and_modes(tree, domain, mode):
    out, _ = tree
    for p in (out / "digits" / domain / "data").iterdir():
        with Image.open(p) as im:
            assert (im.format, im.mode, im.size) == ("PNG", mode, (28, 28)), p
    for p in (out / "face" / "faces").iterdir():
        with Image.open(p) as im:
            assert (im.mode, im.size) == ("RGB", (32, 32))


def test_every_label_in_train(tree):
    out, _ = tree
    for domain in synth.DOMAINS:
        _, rows = read_csv(out / "digits" / domain / "train.csv")
        assert {int(label) for _, label in rows} == set(range(10)), domain


def test_noise_tensors(tree):
    out, _ = tree
    tensors = [torch.load(out / "face" / "noise" / f"{i:02d}.pt", weights_only=True) for i in range(10)]
    for t in tensors:
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (1, 3, 32, 32)
        assert abs(float(t.mean())) < 0.3 and 0.7 < float(t.std()) < 1.3
    assert not torch.equal(tensors[0], tensors[1])
    big = synth.make_noise(SEED, size=64, count=2)
    assert big[0].shape == (1, 3, 64, 64) and big[0].dtype == torch.float32


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(tree, tmp_path):
    out, _ = tree
    again = tmp_path / "again"
    build(again)
    first, second = all_files(out), all_files(again)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []

    other = tmp_path / "other"
    build(other, seed=SEED + 1)
    third = all_files(other)
    for domain in synth.DOMAINS:
        names = [k for k in first if k.startswith(f"digits/{domain}/data/")]
        same = sum(first[k] == third[k] for k in names)
        assert same == 0, (domain, same)
    assert first["face/noise/00.pt"] != third["face/noise/00.pt"]


# ---------------------------------------------------------------- recipes


def test_mnistm_blend_values():
    digit = np.array([[0, 200]], dtype=np.uint8)
    crop = np.array([[[10, 250, 0], [10, 250, 200]]], dtype=np.uint8)
    out = sources.mnistm_blend(digit, crop)
    assert out.dtype == np.uint8
    assert out.tolist() == [[[10, 250, 0], [190, 50, 0]]]


def test_mnistm_sample_is_digit_minus_crop(tree):
    out, _ = tree
    digits, labels, _ = sources.load_mnist()
    plan = synth.plan_domain(SIZES["mnistm"], SEED, "mnistm", labels)
    photos = sources.load_photos()
    for item in plan[:5]:
        rng = synth.sample_rng(SEED, "mnistm", item.index)
        crop = sources.random_crop(photos, rng, 28)
        expected = np.abs(digits[item.source].astype(int)[..., None] - crop.astype(int))
        got = np.asarray(Image.open(out / "digits" / "mnistm" / "data" / item.name))
        np.testing.assert_array_equal(got, expected)
        assert item.label == labels[item.source]


def test_plan_sources_disjoint_across_splits():
    _, labels, _ = sources.load_mnist()
    # 30 samples per split pool of ~15 digits (tiny source): digits are reused, never shared
    small = labels[:100]
    plan = synth.plan_domain(400, 0, "mnistm", small)
    by_split = {s: {it.source for it in plan if it.split == s} for s in synth.SPLITS}
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    assert sorted(it.index for it in plan) == list(range(400))
    assert all(it.label == small[it.source] for it in plan)


def test_usps_render_margin_and_range():
    from sklearn.datasets import load_digits

    img8 = load_digits().images[0]
    out = sources.render_usps(img8, np.random.default_rng(0))
    assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() == 255
    assert out[:2].max() == 0 and out[-2:].max() == 0 and out[:, :2].max() == 0 and out[:, -2:].max() == 0


# ---------------------------------------------------------------- MNIST IDX input


def test_read_idx_plain_and_gzip(tmp_path):
    payload = bytes(range(2 * 3 * 4))
    p = write_idx(tmp_path / "a-idx3-ubyte", 0x803, (2, 3, 4), payload)
    arr = sources.read_idx(p, magic=0x803)
    assert arr.shape == (2, 3, 4) and arr.dtype == np.uint8 and arr.ravel().tolist() == list(payload)
    gz = write_idx(tmp_path / "b.gz", 0x801, (5,), bytes([9, 8, 7, 6, 5]), compress=True)
    assert sources.read_idx(gz, magic=0x801).tolist() == [9, 8, 7, 6, 5]


def test_read_idx_errors_name_the_file(tmp_path):
    bad = write_idx(tmp_path / "wrong-magic", 0x802, (2,), b"\x00\x01")
    with pytest.raises(ValueError, match=r"wrong-magic.*magic number 0x00000802.*0x00000801"):
        sources.read_idx(bad, magic=0x801)
    short = write_idx(tmp_path / "short-payload", 0x801, (5,), b"\x00\x01")
    with pytest.raises(ValueError, match="short-payload"):
        sources.read_idx(short)
    with pytest.raises(FileNotFoundError, match="absent-file"):
        sources.read_idx(tmp_path / "absent-file")


def test_mnist_idx_dir_used_and_bad_dir_rejected(tmp_path):
    images, labels = tiny_mnist_dir(tmp_path / "idx", n=40, compress=True)
    out = tmp_path / "t"
    build(out, mnist_idx=tmp_path / "idx", sizes={"mnistm": 30, "usps": 10, "svhn": 10, "faces": 2})
    assert "MNIST IDX files" in (out / "README.txt").read_text()
    plan = synth.plan_domain(30, SEED, "mnistm", labels)
    photos = sources.load_photos()
    item = plan[0]
    crop = sources.random_crop(photos, synth.sample_rng(SEED, "mnistm", item.index), 28)
    got = np.asarray(Image.open(out / "digits" / "mnistm" / "data" / item.name))
    np.testing.assert_array_equal(got, sources.mnistm_blend(images[item.source], crop))

    bad = tmp_path / "bad"
    tiny_mnist_dir(bad, n=10)
    write_idx(bad / "train-labels-idx1-ubyte", 0x803, (10,), bytes(10))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*magic"):
        build(tmp_path / "never", mnist_idx=bad)
    (bad / "train-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        build(tmp_path / "never", mnist_idx=bad)
    assert not (tmp_path / "never").exists()
    assert not [p for p in tmp_path.iterdir() if "synth-tmp" in p.name]


# ---------------------------------------------------------------- output folder handling


def test_existing_output_refused_unless_overwrite(tmp_path):
    small = {"mnistm": 10, "usps": 10, "svhn": 10, "faces": 1}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        build(foreign, sizes=small)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build(foreign, sizes=small, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "user data"

    empty = tmp_path / "empty"
    empty.mkdir()
    build(empty, sizes=small)
    assert (empty / "README.txt").is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        build(empty, sizes=small)
    build(empty, sizes={**small, "svhn": 20}, overwrite=True)
    _, rows = read_csv(empty / "digits" / "svhn" / "train.csv")
    assert len(rows) == synth.split_counts(20)["train"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "foreign"]


def test_bad_sizes_rejected(tmp_path):
    with pytest.raises(ValueError, match="faces"):
        build(tmp_path / "x", sizes={"faces": 101})
    with pytest.raises(ValueError, match="unknown size key"):
        build(tmp_path / "x", sizes={"mnist": 5})
    with pytest.raises(ValueError, match="seed"):
        synth.synthesize(tmp_path / "x", seed=-1)
