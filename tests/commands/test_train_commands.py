"""`hw2rt train ...`, `eval-digits` and `tsne` from the command line, on a tiny stand-in tree."""
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from hw2rt.cli import main
from hw2rt.data.synth import synthesize


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "hw2_data"
    synthesize(root, seed=0, sizes={"mnistm": 40, "usps": 40, "svhn": 40, "faces": 8}, progress=False)
    return root


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_classifier_then_grade_its_own_digits(tree, tmp_path):
    r = run("train", "classifier", "--data", tree, "--out", tmp_path / "clf", "--epochs", 1,
            "--batch-size", 16, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "clf" / "Classifier.pth").is_file() and (tmp_path / "clf" / "summary.json").is_file()
    # A second run into the same folder is refused unless --resume or --overwrite says what to do.
    again = run("train", "classifier", "--data", tree, "--out", tmp_path / "clf", "--epochs", 1,
                "--device", "cpu")
    assert again.exit_code == 1 and "clf" in again.output
    # eval-digits on renamed stand-in images: the names carry the labels, the grader reads them.
    images = tmp_path / "digits"
    images.mkdir()
    rows = (tree / "digits" / "mnistm" / "val.csv").read_text().splitlines()[1:]
    for k, row in enumerate(rows[:20]):
        name, label = row.split(",")
        (images / f"{label}_{k:03d}.png").write_bytes(
            (tree / "digits" / "mnistm" / "data" / name).read_bytes())
    r = run("eval-digits", "--images", images, "--classifier", tmp_path / "clf" / "Classifier.pth")
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and f"/{min(20, len(rows))})" in r.output
    assert "resized" not in r.output  # 28x28 already
    Image.open(images / f"{rows[0].split(',')[1]}_000.png").resize((32, 32)).save(images / "0_999.png")
    r = run("eval-digits", "--images", images, "--classifier", tmp_path / "clf" / "Classifier.pth")
    assert r.exit_code == 0 and "; 1 resized to 28x28" in r.output, r.output


def test_train_dann_and_tsne(tree, tmp_path):
    r = run("train", "dann", "--source", tree / "digits" / "mnistm", "--target", tree / "digits" / "usps",
            "--mode", "dann", "--epochs", 1, "--batch-size", 16, "--device", "cpu",
            "--out", tmp_path / "dann")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "dann" / "summary.json").read_text())
    assert summary  # the trainer's own summary, printed above
    r = run("tsne", "--checkpoint", tmp_path / "dann" / "dann.safetensors",
            "--source", tree / "digits" / "mnistm", "--target", tree / "digits" / "usps",
            "--out", tmp_path / "t", "--n-per-domain", 12)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t_digit.png").is_file() and (tmp_path / "t_domain.png").is_file()
    r = run("tsne", "--checkpoint", tmp_path / "dann" / "dann.safetensors",
            "--source", tree / "digits" / "mnistm", "--target", tree / "digits" / "usps",
            "--out", tmp_path / "c", "--n-per-domain", 12, "--bn-stats", "checkpoint")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c_domain.png").read_bytes() != (tmp_path / "t_domain.png").read_bytes()


def test_train_bad_data_folder(tmp_path):
    r = run("train", "ddpm", "--data", tmp_path / "nope", "--out", tmp_path / "o", "--steps", 1,
            "--device", "cpu")
    assert r.exit_code == 1 and "nope" in r.output
