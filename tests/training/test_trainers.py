"""Trainers, resumable checkpoints, eval-digits and t-SNE on tiny data built in tmp_path."""
import itertools
import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from hw2rt.checkpoints import load_model, read_checkpoint
from hw2rt.data.layout import DigitsDataset, FacesDataset
from hw2rt.errors import Hw2rtError
from hw2rt.evaluate import digit_accuracy, tsne
from hw2rt.models.dann import grl_lambda
from hw2rt.models.digit_classifier import DigitClassifier
from hw2rt.runtime.ddim import ddim_sample
from hw2rt.runtime.schedules import FACE
from hw2rt.training.batches import EpochShuffle, epoch_batches
from hw2rt.training.loop import CHECKPOINT, METRICS
from hw2rt.training.train_classifier import train_classifier, write_assignment_classifier
from hw2rt.training.train_dann import train_dann
from hw2rt.training.train_ddpm import train_ddpm
from hw2rt.training.train_face import train_face

QUIET = {"progress": False, "device": "cpu"}


def make_domain(root, n=20, gray=False, seed=0):
    """A digit domain in the HW2 layout: data/*.png + train/val/test CSVs (labels i % 10)."""
    rng = np.random.default_rng(seed)
    (root / "data").mkdir(parents=True)
    rows = []
    for i in range(n):
        shape = (28, 28) if gray else (28, 28, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / "data" / f"{i:05d}.png")
        rows.append((f"{i:05d}.png", i % 10))
    cuts = {"train": rows[: n // 2], "val": rows[n // 2: 3 * n // 4], "test": rows[3 * n // 4:]}
    for split, part in cuts.items():
        (root / f"{split}.csv").write_text("image_name,label\n" + "".join(f"{a},{b}\n" for a, b in part))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("hw2_data")
    make_domain(root / "digits" / "mnistm", seed=1)
    make_domain(root / "digits" / "usps", gray=True, seed=2)
    faces = root / "face" / "faces"
    faces.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(faces / f"{i:05d}.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(faces / "big.png")  # resized
    return root


def metrics(out):
    return [json.loads(line) for line in (out / METRICS).read_text().splitlines()]


def resumable(out):
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["format"] == "hw2rt-train-1"
    return state


# ----------------------------------------------------------------------------------------- data


def test_digits_dataset_reads_layout_and_repeats_gray(data):
    rgb = DigitsDataset(data / "digits" / "mnistm", "train")
    gray = DigitsDataset(data / "digits" / "usps", "val")
    assert rgb.images.shape == (10, 3, 28, 28) and rgb.images.dtype == torch.uint8
    x, y = rgb[3]
    assert x.shape == (3, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0 and y == 3
    expected = np.asarray(Image.open(data / "digits" / "mnistm" / "data" / "00003.png"))
    assert torch.equal(rgb.images[3].permute(1, 2, 0), torch.from_numpy(expected.copy()))
    assert len(gray) == 5 and torch.equal(gray.images[:, 0], gray.images[:, 2])
    assert gray.labels.tolist() == [0, 1, 2, 3, 4]


def test_faces_dataset_signed_and_resized(data):
    ds = FacesDataset(data / "face" / "faces", size=32)
    assert len(ds) == 9 and ds.images.shape == (9, 3, 32, 32)
    x = ds[0]
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.9  # random pixels reach near 0


def test_bad_label_is_one_line_error(tmp_path):
    dom = make_domain(tmp_path / "d", n=4)
    (dom / "train.csv").write_text("image_name,label\n00000.png,12\n")
    with pytest.raises(Hw2rtError, match="train.csv: label 12 of 00000.png"):
        DigitsDataset(dom, "train")


def test_epoch_batches_are_a_keyed_shuffle():
    a, b = epoch_batches(10, 4, seed=0, epoch=1), epoch_batches(10, 4, seed=0, epoch=1)
    assert torch.equal(a, b) and a.shape == (2, 4) and len(set(a.flatten().tolist())) == 8
    assert not torch.equal(a, epoch_batches(10, 4, seed=0, epoch=2))


def test_epoch_shuffle_follows_the_epochs_and_cycles_a_smaller_domain():
    at = EpochShuffle(10, 4, seed=3, steps_per_epoch=2)  # 10 images, batch 4: two batches an epoch
    assert torch.equal(at(3), epoch_batches(10, 4, seed=3, epoch=1)[1])
    assert torch.equal(at(0), epoch_batches(10, 4, seed=3, epoch=0)[0])
    small = EpochShuffle(5, 4, seed=1, steps_per_epoch=3)  # one batch of its own, three steps an epoch
    assert torch.equal(small(2), epoch_batches(5, 4, seed=1, epoch=0)[0])
    assert torch.equal(small(3), epoch_batches(5, 4, seed=1, epoch=1)[0])


# ----------------------------------------------------------------------------------------- ddpm


DDPM = {"batch_size": 4, "n_feat": 8, "lr": 1e-3, "log_every": 1, "seed": 3, **QUIET}


def test_ddpm_trains_exports_and_resumes_exactly(data, tmp_path):
    full = train_ddpm(data, tmp_path / "full", steps=5, **DDPM)
    assert np.isfinite(full["final_loss"]) and full["steps"] == 5
    _, name, config = load_model(full["exported"]["digit_unet"])
    assert name == "digit_unet" and config["n_feat"] == 8
    sd, _ = read_checkpoint(full["exported"]["digit_unet"])
    assert sd["init_conv.conv1.0.weight"].dtype == torch.float16  # params exported in fp16

    part = tmp_path / "part"
    train_ddpm(data, part, steps=3, **DDPM)
    assert resumable(part)["step"] == 3
    with pytest.raises(Hw2rtError, match="resume it, or pass overwrite"):
        train_ddpm(data, part, steps=5, **DDPM)
    resumed = train_ddpm(data, part, steps=5, resume=True, **DDPM)
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 5
    assert [m["step"] for m in metrics(part)] == [1, 2, 3, 4, 5]
    a, b = resumable(tmp_path / "full"), resumable(part)
    assert int(b["optimizer"]["state"][0]["step"]) == 5
    for k in a["model"]:  # model, optimizer, EMA and RNG restored: 3 + 2 steps == 5 steps
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert [m["loss"] for m in metrics(tmp_path / "full")] == [m["loss"] for m in metrics(part)]
    again = train_ddpm(data, part, steps=5, resume=True, **DDPM)  # already done: re-exports, trains nothing
    assert again["steps"] == 5 and again["final_loss"] == resumed["final_loss"]
    assert len(metrics(part)) == 5


def test_ddpm_resume_refuses_other_model(data, tmp_path):
    train_ddpm(data, tmp_path, steps=1, **DDPM)
    with pytest.raises(Hw2rtError, match="n_feat"):
        train_ddpm(data, tmp_path, steps=2, resume=True, **{**DDPM, "n_feat": 16})


def test_ctrl_c_saves_then_resume_finishes(data, tmp_path):
    def interrupt(step, extras):
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # handled by the loop: stop after this step

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background (nohup, &)
    with pytest.raises(KeyboardInterrupt):
        train_ddpm(data, tmp_path, steps=4, on_step=interrupt, **DDPM)
    assert resumable(tmp_path)["step"] == 2
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back
    done = train_ddpm(data, tmp_path, steps=4, resume=True, **DDPM)
    assert done["steps"] == 4 and resumable(tmp_path)["step"] == 4


# ----------------------------------------------------------------------------------------- face


def test_face_trainer_exports_ddim_compatible_unet(data, tmp_path):
    s = train_face(data, tmp_path, steps=2, batch_size=4, base=16, norm_groups=8, log_every=1, **QUIET)
    assert np.isfinite(s["final_loss"]) and s["n_images"] == 9
    net, name, config = load_model(s["exported"]["face_unet"])
    assert name == "face_unet" and config == {"base": 16, "norm_groups": 8}
    with torch.no_grad():  # plugs into Problem 2's DDIM sampler as is (raw integer t)
        img = ddim_sample(lambda x, t: net(x, t), torch.randn(2, 3, 32, 32), FACE, FACE.timesteps(3))
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()
    st = resumable(tmp_path)
    assert st["kind"] == "face" and st["step"] == 2 and st["ema"] is not None


# ----------------------------------------------------------------------------------------- dann


@pytest.mark.parametrize("mode", ["source", "dann", "target"])
def test_dann_modes(data, tmp_path, mode):
    s = train_dann(data / "digits" / "mnistm", data / "digits" / "usps", tmp_path, mode=mode, epochs=2,
                   batch_size=4, log_every=1, **QUIET)
    assert s["steps"] == 4 and np.isfinite(s["final_loss"])  # 10 train images // 4 = 2 steps/epoch
    evals = [m for m in metrics(tmp_path) if m.get("event") == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]
    assert s["best"]["value"] == max(e["target_val_acc"] for e in evals)
    net, name, _ = load_model(s["exported"]["dann"], "dann")
    assert name == "dann" and not any(k.startswith("domain_classifier") for k in net.state_dict())
    state = resumable(tmp_path)
    assert state["scheduler"]["last_epoch"] == 2  # CosineAnnealingWarmRestarts stepped per epoch
    full = {k: v for k, v in state["model"].items()}
    torch.save(full, tmp_path / "full_dann.pt")  # the full DANN state dict also loads (domain head dropped)
    assert load_model(tmp_path / "full_dann.pt", "dann")[1] == "dann"


def test_dann_grl_schedule_and_mode_check(data, tmp_path):
    s = train_dann(data / "digits" / "mnistm", data / "digits" / "usps", tmp_path, mode="dann", epochs=2,
                   batch_size=4, log_every=1, **QUIET)
    lams = [m["grl_lambda"] for m in metrics(tmp_path) if "grl_lambda" in m]
    total = s["steps"]
    assert lams == pytest.approx([grl_lambda(i / total) for i in range(total)])
    assert lams[0] == 0.0 and all(a < b for a, b in itertools.pairwise(lams))
    with pytest.raises(Hw2rtError, match="--mode"):
        train_dann(data / "digits" / "mnistm", data / "digits" / "usps", tmp_path / "x", mode="both", **QUIET)


def test_target_statistics_recompute_batchnorm_on_the_target_only():
    from hw2rt.models.dann import DANN, with_batchnorm_statistics

    torch.manual_seed(0)
    net = DANN().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    images = torch.randint(0, 256, (20, 3, 28, 28), dtype=torch.uint8)
    adapted = with_batchnorm_statistics(net, images, batch_size=64)  # one batch: exact statistics
    conv1 = net.feature.conv[0](images.float() / 255 * 2 - 1)  # the extractor normalises [0,1] to [-1,1]
    bn = adapted.feature.conv[1]
    torch.testing.assert_close(bn.running_mean, conv1.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, conv1.var((0, 2, 3), unbiased=True), atol=1e-4, rtol=1e-4)
    assert not adapted.training
    for k, v in net.state_dict().items():  # the original is untouched; the copy differs in statistics only
        assert torch.equal(v, before[k])
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(adapted.state_dict()[k], v)


def test_dann_resume_restores_scheduler(data, tmp_path):
    kw = {"mode": "dann", "batch_size": 4, "log_every": 1, **QUIET}
    train_dann(data / "digits" / "mnistm", data / "digits" / "usps", tmp_path, epochs=1, **kw)
    lr1 = resumable(tmp_path)["optimizer"]["param_groups"][0]["lr"]
    s = train_dann(data / "digits" / "mnistm", data / "digits" / "usps", tmp_path, epochs=3, resume=True,
                   **kw)
    st = resumable(tmp_path)
    assert s["resumed_from_step"] == 2 and st["step"] == 6 and st["scheduler"]["last_epoch"] == 3
    assert lr1 == pytest.approx(0.5e-4)  # cosine over T_0 = 2 epochs: halfway after epoch 1


# ----------------------------------------------------------------------------------------- classifier


def test_random_shift_translates_each_image_by_at_most_max_shift():
    from hw2rt.training.batches import random_shift

    torch.manual_seed(0)
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one lit pixel in the middle: where it lands is the shift
    y = random_shift(x, 2)
    assert y.shape == x.shape and torch.equal(y.sum((1, 2, 3)), torch.ones(64))
    where = y[:, 0].flatten(1).argmax(1)
    dy, dx = where // 9 - 4, where % 9 - 4
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # every offset in range, the extremes drawn
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 10  # per image, not one shift for the batch
    assert torch.equal(random_shift(x, 0), x)


def test_classifier_trains_and_writes_assignment_pth(data, tmp_path):
    s = train_classifier(data, tmp_path, epochs=1, batch_size=4, **QUIET)
    assert s["steps"] == 2 and 0.0 <= s["best"]["value"] <= 1.0
    obj = torch.load(s["exported"]["assignment_pth"], weights_only=True)
    assert set(obj) == {"state_dict", "optimizer"} and "fc3.weight" in obj["state_dict"]
    a = load_model(s["exported"]["assignment_pth"], "digit_classifier")[0]
    b = load_model(s["exported"]["digit_classifier"])[0]
    x = torch.rand(3, 3, 28, 28)
    torch.testing.assert_close(a(x), b(x), atol=2e-2, rtol=2e-2)  # fp16 export vs fp32 .pth


# ----------------------------------------------------------------------------------------- eval-digits


def test_digit_accuracy_known_answer(tmp_path):
    torch.manual_seed(0)
    net = DigitClassifier().eval()
    with torch.no_grad():
        net.fc3.weight.mul_(20)  # wide logit margins: predictions do not hinge on rounding
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (30, 28, 28, 3), dtype=np.uint8)
    with torch.no_grad():
        preds = net(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255).argmax(1).tolist()
    folder = tmp_path / "out"
    folder.mkdir()
    correct = set(range(0, 30, 3))  # 10 of 30 named after the prediction, the rest off by one
    for i, (img, p) in enumerate(zip(imgs, preds)):
        label = p if i in correct else (p + 1) % 10
        Image.fromarray(img).save(folder / f"{label}_{i:03d}.png")
    write_assignment_classifier(net, tmp_path / "Classifier.pth", {"state": {}, "param_groups": []})
    for classifier in (net, tmp_path / "Classifier.pth"):
        r = digit_accuracy(folder, classifier, device="cpu")
        assert r["n"] == 30 and r["correct"] == 10 and r["accuracy"] == pytest.approx(1 / 3)
        assert sum(d["n"] for d in r["per_digit"].values()) == 30
        assert sum(d["correct"] for d in r["per_digit"].values()) == 10


def test_digit_accuracy_resizes_by_the_one_rule_and_counts(tmp_path):
    torch.manual_seed(0)
    net = DigitClassifier().eval()
    with torch.no_grad():
        net.fc3.weight.mul_(20)  # wide logit margins: predictions do not hinge on rounding
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    small = np.stack([np.asarray(Image.fromarray(a).resize((28, 28), Image.BILINEAR)) for a in big])
    with torch.no_grad():
        preds = net(torch.from_numpy(small).permute(0, 3, 1, 2).float() / 255).argmax(1).tolist()
    folder = tmp_path / "out"
    folder.mkdir()
    for i, (img, p) in enumerate(zip(big, preds)):
        Image.fromarray(img).save(folder / f"{p}_{i:03d}.png")  # 32x32, named after the 28x28 prediction
    Image.fromarray(small[0]).save(folder / f"{preds[0]}_100.png")  # already 28x28: not counted
    r = digit_accuracy(folder, net, device="cpu")
    assert r["n"] == 5 and r["resized"] == 4 and r["correct"] == 5


def test_digit_accuracy_rejects_unlabelled_name(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "0_001.png")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "x_001.png")
    with pytest.raises(Hw2rtError, match="x_001.png: the file name must start with the digit"):
        digit_accuracy(folder, DigitClassifier(), device="cpu")


# ----------------------------------------------------------------------------------------- t-SNE


def test_tsne_writes_two_pngs(data, tmp_path):
    s = train_dann(data / "digits" / "mnistm", data / "digits" / "usps", tmp_path / "run", mode="dann",
                   epochs=1, batch_size=4, **QUIET)
    r = tsne(s["exported"]["dann"], data / "digits" / "mnistm", data / "digits" / "usps",
             tmp_path / "fig" / "m2u", n_per_domain=4, perplexity=2, device="cpu")
    assert r["n_source"] == 4 and r["n_target"] == 4
    for key in ("digit_png", "domain_png"):
        with Image.open(r[key]) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert sorted(os.listdir(tmp_path / "fig")) == ["m2u_digit.png", "m2u_domain.png"]
