"""Data-parallel training under torchrun (gloo, 2 CPU processes): the same steps as one process with the
same global batch, one checkpoint on Ctrl-C at any rank, resumed on another world size."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hw2rt.errors import Hw2rtError
from hw2rt.models.digit_unet import DigitUNet
from hw2rt.training.data_parallel import GlobalBatchNorm, Part, use_global_batchnorm
from hw2rt.training.loop import CHECKPOINT, METRICS
from tests.training.test_trainers import make_domain

BIN = Path(sys.executable).parent
# What `hw2rt train ddpm` runs (the CLI's _train: torchrun session, devices, exit 130 on Ctrl-C), with a
# loss logged every step and, on one rank, a real SIGINT after a given step.
DRIVER = """
import os, signal, sys
from hw2rt.cli.training import _train
from hw2rt.training.train_ddpm import train_ddpm
data, out, steps, interrupt_rank, interrupt_step = sys.argv[1:6]
def on_step(step, extras):
    if step == int(interrupt_step) and os.environ.get("RANK", "0") == interrupt_rank:
        os.kill(os.getpid(), signal.SIGINT)
_train(train_ddpm, data, out, device="cpu", steps=int(steps), n_feat=8, batch_size=8, lr=1e-3, log_every=1,
       progress=False, resume="--resume" in sys.argv, on_step=on_step)
"""


def test_part_of_a_global_batch_is_contiguous_and_must_split_evenly():
    g = torch.Generator()
    batch = torch.arange(8)
    assert torch.equal(Part(g, 1, 2).of(batch), torch.tensor([4, 5, 6, 7]))
    assert Part(g).of(batch) is batch
    with pytest.raises(Hw2rtError, match="does not split evenly over 3 processes"):
        Part(g, 0, 3).of(batch)


def test_global_batchnorm_keeps_the_parameters_and_is_batchnorm_outside_a_step():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 5),
                        nn.BatchNorm1d(5))
    keys, weight = list(net.state_dict()), net[1].weight
    x = torch.randn(6, 3, 6, 6)
    expected = torch.nn.functional.batch_norm(net[0](x), None, None, net[1].weight, net[1].bias, True)
    use_global_batchnorm(net)
    assert isinstance(net[1], GlobalBatchNorm) and isinstance(net[4], GlobalBatchNorm)
    assert net[1].weight is weight and list(net.state_dict()) == keys
    torch.testing.assert_close(net[1](net[0](x)), expected)
    assert int(net[1].num_batches_tracked) == 1  # the running statistics are BatchNorm's


def _train(tmp_path, data, out, nproc, steps, *extra, interrupt=("-1", "-1")):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(driver), str(data), str(out), str(steps), *interrupt, *extra]
    cmd = [sys.executable, *args] if nproc == 1 else [
        str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / METRICS).read_text().splitlines())]


def _weights(out):
    return torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)


def _assert_same_model(state, reference):
    """The same weights within float tolerance, but for the biases a normalisation removes (a conv's
    before its BatchNorm or GroupNorm, and the BatchNorm's running mean that follows them): their
    gradient is zero up to rounding, which Adam scales up to full-size steps, so they drift apart with
    no effect on the function. That is checked instead: both nets' outputs on one batch (train mode)."""
    net = DigitUNet(n_feat=8)
    free = set()
    for name, m in net.named_modules():
        if isinstance(m, nn.Sequential) and len(m) > 1 and isinstance(m[0], nn.Conv2d) and \
                isinstance(m[1], (nn.BatchNorm2d, nn.GroupNorm)):
            free |= {f"{name}.0.bias", f"{name}.1.running_mean"}
    assert free and set(state["model"]) == set(reference["model"])
    for key in set(reference["model"]) - free:
        torch.testing.assert_close(state["model"][key], reference["model"][key], rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    x, c, t = torch.randn(6, 3, 28, 28, generator=g), torch.arange(6), torch.rand(6, generator=g)
    outputs = []
    for s in (state, reference):
        net.load_state_dict(s["model"])
        outputs.append(net.train()(x, c, t, torch.zeros(6)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return make_domain(tmp_path_factory.mktemp("ddp") / "mnistm", n=40)  # 20 training images: 2 steps/epoch


@pytest.fixture(scope="module")
def one_process(digits, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    r = _train(tmp, digits, tmp / "run", 1, 4)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "run"


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(digits, one_process, tmp_path):
    r = _train(tmp_path, digits, tmp_path / "run", 2, 4)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ddpm: 4 steps") == 1 and "x 2 processes" in r.stdout  # rank 0 reports
    # the first step's loss (BatchNorm over the global batch), and every step after the averaged updates
    assert _losses(tmp_path / "run") == pytest.approx(_losses(one_process), rel=1e-5)
    two, one = _weights(tmp_path / "run"), _weights(one_process)
    assert two["world_size"] == 2 and two["step"] == 4 and two["ema"] is not None
    _assert_same_model(two, one)
    assert (tmp_path / "run" / "digit_unet.safetensors").exists()


def test_ctrl_c_on_one_rank_saves_once_and_resumes_on_another_world_size(digits, one_process, tmp_path):
    out = tmp_path / "run"
    r = _train(tmp_path, digits, out, 2, 4, interrupt=("1", "1"))  # SIGINT to rank 1 after step 1
    assert r.returncode != 0
    assert r.stdout.count("interrupted at step 1: resumable checkpoint") == 1  # rank 0 saved, once
    assert r.stderr.count("interrupted: checkpoint saved; continue with --resume") == 1
    state = _weights(out)
    assert state["step"] == 1 and state["world_size"] == 2 and len(_losses(out)) == 1
    assert not (out / "digit_unet.safetensors").exists()

    r = _train(tmp_path, digits, out, 1, 4, "--resume")  # one process carries on the two's run
    assert r.returncode == 0, r.stderr[-2000:]
    assert _losses(out) == pytest.approx(_losses(one_process), rel=1e-5)
    _assert_same_model(_weights(out), _weights(one_process))


def test_dann_source_mode_trains_on_two_processes_with_parameters_left_unused(tmp_path):
    root = tmp_path / "digits"
    make_domain(root / "mnistm", n=40, seed=1)
    make_domain(root / "usps", n=40, gray=True, seed=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", str(BIN / "hw2rt"), "train", "dann",
           "--mode", "source", "--source", str(root / "mnistm"), "--target", str(root / "usps"),
           "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]  # the domain classifier gets no gradient: DDP was told
    assert (tmp_path / "run" / "dann.safetensors").exists() and r.stdout.count("dann: 2 steps") == 1
