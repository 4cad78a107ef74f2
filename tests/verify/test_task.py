"""Task-level agreement (hw2rt.verify.task): graded digits and classify labels, candidate vs reference."""
import json

import numpy as np
import pytest
import torch

from hw2rt.checkpoints import load_model, resolve_checkpoint
from hw2rt.data.images import read_images
from hw2rt.data.synth import synthesize
from hw2rt.engines import TorchEngine, open_engine
from hw2rt.errors import Hw2rtError
from hw2rt.evaluate import digit_accuracy
from hw2rt.io import list_images, mse_255, read_image, read_labels_csv, write_labels_csv
from hw2rt.models.predict import predict
from hw2rt.runtime import jobs
from hw2rt.verify.task import BUDGETS, digit_agreement, format_task, label_agreement

GRADER = resolve_checkpoint(None, "digit_classifier")
FAST = {"sampler": "ddim", "steps": 5, "eta": 1.0, "w": 2.0}  # the gate's sampler, fewer steps


class Shifted(TorchEngine):
    """The reference's module with one output shifted: a candidate that is wrong by a known amount."""

    def __init__(self, net, model, output, shift):
        super().__init__(net, model)
        self.output, self.shift = output, shift

    def _run(self, feeds):
        out = dict(super()._run(feeds))
        out[self.output] = out[self.output] + self.shift
        return out


def _grader():
    return load_model(GRADER, "digit_classifier")[0]


@pytest.fixture(scope="module")
def digit_ref():
    with open_engine("digit_unet", resolve_checkpoint(None, "digit_unet"), backend="torch") as engine:
        yield engine


@pytest.fixture(scope="module")
def dann_ref():
    with open_engine("dann", resolve_checkpoint("dann_usps", "dann"), backend="torch") as engine:
        yield engine


@pytest.fixture(scope="module")
def usps(tmp_path_factory):
    """A stand-in USPS-like domain: data/ (60 images, every split) and test.csv (9 of them)."""
    root = tmp_path_factory.mktemp("task") / "hw2_data"
    synthesize(root, seed=0, sizes={"mnistm": 10, "usps": 60, "svhn": 10, "faces": 1}, progress=False)
    return root / "digits" / "usps"


def test_digits_candidate_is_reference(digit_ref):
    r = digit_agreement(digit_ref, digit_ref, 20, seed=0, **FAST)
    assert r["task"] == "digits" and r["n"] == 20 and r["steps"] == 5 and r["grader"] == str(GRADER)
    assert r["agreement"] == 1.0 and r["image_mse_255"] == 0.0 and r["accuracy_drop_points"] == 0.0
    assert r["accuracy"]["reference"] == r["accuracy"]["candidate"] > 0.5  # the bundled model draws digits
    assert r["passed"] and r["budget"] == BUDGETS["digit_unet"]
    assert json.loads(json.dumps(r)) == r
    assert "PASS" in format_task(r) and len(format_task(r).splitlines()) == 2


def test_digits_corrupted_candidate_fails_with_the_graded_folders_numbers(digit_ref, tmp_path):
    """The report's numbers are what `hw2rt ddpm` + `hw2rt eval-digits` give on the written folders."""
    cand = Shifted(digit_ref.module, "digit_unet", "eps", 0.1)
    r = digit_agreement(digit_ref, cand, 20, seed=3, **FAST)
    preds, pics = [], []
    for engine, name in ((digit_ref, "ref"), (cand, "cand")):
        jobs.digit_job(engine, tmp_path / name, per_digit=2, seed=3, progress=False, **FAST)
        graded = digit_accuracy(tmp_path / name, GRADER)
        side = {"ref": "reference", "cand": "candidate"}[name]
        assert r["accuracy"][side] == pytest.approx(graded["accuracy"])
        files = list_images(tmp_path / name)
        preds.append(predict(_grader(), read_images(files, 28)[0]))
        pics.append([read_image(f) for f in files])
    assert r["agreement"] == pytest.approx(float((preds[0] == preds[1]).float().mean()))
    assert r["image_mse_255"] == pytest.approx(np.mean([mse_255(a, b) for a, b in zip(*pics)]))
    assert r["agreement"] < 1 and r["image_mse_255"] > 1
    drop = 100 * (r["accuracy"]["reference"] - r["accuracy"]["candidate"])
    assert r["accuracy_drop_points"] == pytest.approx(drop)
    assert drop > BUDGETS["digit_unet"]["accuracy_drop_points"]
    assert not r["passed"] and "FAIL" in format_task(r)


def test_digits_refuses_what_the_digit_job_cannot_write(digit_ref, dann_ref):
    with pytest.raises(Hw2rtError, match="--task 15: .* multiple of 10"):
        digit_agreement(digit_ref, digit_ref, 15)
    with pytest.raises(Hw2rtError, match="two digit_unet engines, got digit_unet and dann"):
        digit_agreement(digit_ref, dann_ref, 10)
    with pytest.raises(Hw2rtError, match="--steps 0"):
        digit_agreement(digit_ref, digit_ref, 10, steps=0)


def _independent_labels(engine, folder, output, shift=0.0):
    """argmax of the engine's output on the folder's decoded images, outside the classify job."""
    x = read_images(list_images(folder), 28)[0].float() / 255
    return (engine.run({"x": x})[output] + shift).argmax(1).tolist()


def test_labels_reference_itself_and_an_ort_candidate(dann_ref, usps):
    truth = dict(read_labels_csv(usps / "test.csv"))
    ort = open_engine("dann", resolve_checkpoint("dann_usps", "dann"), backend="ort", threads=1)
    for cand in (dann_ref, ort):
        r = label_agreement(dann_ref, cand, usps / "data", labels_csv=usps / "test.csv")
        assert r["task"] == "labels" and r["n"] == 60 and r["n_labelled"] == 9
        assert r["agreement"] == 1.0 and r["accuracy_drop_points"] == 0.0 and r["passed"]
        json.loads(json.dumps(r))
    ort.close()
    names = [p.name for p in list_images(usps / "data")]
    labels = dict(zip(names, _independent_labels(dann_ref, usps / "data", "log_probs")))
    assert r["accuracy"]["reference"] == pytest.approx(np.mean([labels[k] == y for k, y in truth.items()]))
    unlabelled = label_agreement(dann_ref, dann_ref, usps / "data")
    assert unlabelled["accuracy"] is None and unlabelled["accuracy_drop_points"] is None
    assert unlabelled["passed"]
    assert "no labels" in format_task(unlabelled)


def _shifted_dann(dann_ref, digit, by):
    shift = torch.zeros(10)
    shift[digit] = by  # pushes some images, not all, to `digit`
    return Shifted(dann_ref.module, "dann", "log_probs", shift), shift


def test_labels_shifted_candidate_numbers_and_verdicts(dann_ref, usps, tmp_path):
    """Flipped labels fail without ground truth; with it, only an accuracy drop past the budget fails."""
    everything = tmp_path / "all.csv"  # every image of data/ with its label
    rows = [row for split in ("train", "val", "test") for row in read_labels_csv(usps / f"{split}.csv")]
    write_labels_csv(everything, rows)
    truth = dict(read_labels_csv(everything))
    names = [p.name for p in list_images(usps / "data")]
    ref_labels = _independent_labels(dann_ref, usps / "data", "log_probs")
    for digit, by, fails_with_labels in ((4, 2.0, True), (1, 3.0, False)):
        cand, shift = _shifted_dann(dann_ref, digit, by)
        cand_labels = _independent_labels(dann_ref, usps / "data", "log_probs", shift)
        agreement = np.mean([a == b for a, b in zip(ref_labels, cand_labels)])
        assert 0 < agreement < 1 - BUDGETS["dann"]["accuracy_drop_points"] / 100
        r = label_agreement(dann_ref, cand, usps / "data")
        assert r["agreement"] == pytest.approx(agreement) and not r["passed"]
        r = label_agreement(dann_ref, cand, usps / "data", labels_csv=everything)
        accuracy = [np.mean([labels[names.index(k)] == y for k, y in truth.items()])
                    for labels in (ref_labels, cand_labels)]
        assert r["accuracy"] == {"reference": pytest.approx(accuracy[0]),
                                 "candidate": pytest.approx(accuracy[1])}
        assert r["accuracy_drop_points"] == pytest.approx(100 * (accuracy[0] - accuracy[1]))
        assert r["agreement"] == pytest.approx(agreement) and r["passed"] is not fails_with_labels
    assert r["accuracy_drop_points"] < 0  # the second candidate is the more accurate: it passes


def test_labels_of_the_grader_are_its_argmax(usps):
    net = _grader()
    with open_engine("digit_classifier", GRADER, backend="torch") as ref:
        cand = Shifted(net, "digit_classifier", "logits", 100 * torch.eye(10)[7])  # always 7
        r = label_agreement(ref, cand, usps / "data")
    expected = predict(net, read_images(list_images(usps / "data"), 28)[0])
    assert r["model"] == "digit_classifier" and r["budget"] == BUDGETS["digit_classifier"]
    assert r["agreement"] == pytest.approx(float((expected == 7).float().mean())) and not r["passed"]


def test_labels_bad_csv_is_one_line_error(dann_ref, usps, tmp_path):
    bad = {"missing.csv": None, "header.csv": "name,y\n00000.png,1\n", "row.csv": "image_name,label\nx\n",
           "stranger.csv": "image_name,label\nnot_there.png,1\n", "empty.csv": "image_name,label\n"}
    first = list_images(usps / "data")[0].name
    bad["range.csv"] = f"image_name,label\n{first},12\n"
    for name, text in bad.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(Hw2rtError) as err:
            label_agreement(dann_ref, dann_ref, usps / "data", labels_csv=tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and "\n" not in str(err.value), name


def test_cli_task_grades_digits_and_folders(tmp_path, usps):
    from click.testing import CliRunner

    from hw2rt.cli import main

    run = CliRunner().invoke
    out = tmp_path / "digits.json"
    bundled = str(resolve_checkpoint(None, "digit_unet"))
    result = run(main, ["parity", "--model", "digit_unet", "--checkpoint", bundled, "--backend", "ort",
                        "--threads", "1", "--no-e2e", "--task", "10", "--steps", "3",
                        "--json", str(out)])
    assert result.exit_code == 0, result.output
    task = json.loads(out.read_text())["task"]
    assert task["task"] == "digits" and task["n"] == 10 and task["steps"] == 3 and task["agreement"] == 1.0
    assert "task digits: 10 digits" in result.output
    # --sampler makes the gate (and the end-to-end run) follow that loop: a few-step solver here
    result = run(main, ["parity", "--model", "digit_unet", "--checkpoint", bundled, "--backend", "ort",
                        "--threads", "1", "--task", "10", "--sampler", "dpmpp-2m", "--steps", "4",
                        "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["task"]["sampler"] == "dpmpp-2m" and report["task"]["steps"] == 4
    assert report["task"]["eta"] == 0.0 and report["task"]["agreement"] == 1.0
    assert report["end_to_end"]["sampler"] == "dpmpp-2m cfg w=2.0" and report["end_to_end"]["steps"] == 4
    result = run(main, ["parity", "--model", "digit_unet", "--sampler", "unipc", "--eta", "1"])
    assert result.exit_code == 1 and "--eta applies to --sampler ddim" in result.output
    result = run(main, ["parity", "--model", "dann", "--checkpoint", "dann_usps", "--backend", "ort",
                        "--threads", "1", "--task", str(usps / "data"), "--labels", str(usps / "test.csv")])
    assert result.exit_code == 0, result.output
    assert "task labels (dann): 60 images" in result.output
    for args, message in ((["--model", "digit_unet", "--task", "15"], "multiple of 10"),
                          (["--model", "face_unet", "--task", "10"], "no task grade"),
                          (["--model", "dann", "--task", str(tmp_path / "none")], "not an image folder"),
                          (["--model", "digit_unet", "--task", "10", "--labels", "x"], "--labels belongs")):
        result = run(main, ["parity", *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
