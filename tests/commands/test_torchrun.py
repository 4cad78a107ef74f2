"""Under torchrun (gloo, 2-3 CPU processes): the sharded jobs (classify, ddpm, ddim, interp) write the files
one process writes, and a bad input seen by one rank fails every rank with one line, leaving no output."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hw2rt.data.synth import synthesize
from hw2rt.distributed import World
from hw2rt.io import write_png

BIN = Path(sys.executable).parent
HW2RT, TORCHRUN = BIN / "hw2rt", BIN / "torchrun"


def test_each_rank_takes_the_single_process_chunks_round_robin():
    chunks = [World(r, 3).chunks(10, 3) for r in range(3)]
    assert chunks == [[(0, 3), (9, 10)], [(3, 6)], [(6, 9)]]
    assert World().chunks(10, 4) == [(0, 4), (4, 8), (8, 10)] and World(5, 6).chunks(10, 4) == []


@pytest.mark.parametrize("device, cuda, backend, current", [
    ("auto", True, "nccl", "cuda:1"), ("cuda", True, "nccl", "cuda:1"), ("auto", False, "gloo", None),
    ("cpu", True, "gloo", None)])
def test_a_rank_on_a_gpu_joins_by_nccl_on_its_own_gpu(monkeypatch, device, cuda, backend, current):
    """--device auto (every command's default) on a GPU machine is cuda:LOCAL_RANK, so NCCL, that GPU
    made current before the group starts (NCCL's object collectives use the current device)."""
    from hw2rt import distributed

    calls = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda b, **kw: calls.append(("init", b)))
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: calls.append(("destroy",)))
    with distributed.session(device) as world:
        assert world == World(1, 2, 1)
    assert calls == ([("set_device", current)] if current else []) + [("init", backend), ("destroy",)]


def _crash_on_rank_1(rank, folder):
    """One rank of a 2-process gloo group whose rank 1 fails with a non-hw2rt error inside `agreed`."""
    from hw2rt import distributed
    from hw2rt.errors import Hw2rtError

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                                         world_size=2)

    def work():
        if rank == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\n(the allocator's advice)")
        return "done"

    try:
        outcome = distributed.agreed(work)
    except Hw2rtError as exc:
        outcome = f"Hw2rtError: {exc}"
    finally:
        torch.distributed.destroy_process_group()
    Path(folder, f"rank{rank}.txt").write_text(outcome)


def test_any_error_on_one_rank_is_every_rank_s_one_line(tmp_path, capfd):
    """Not only bad input: e.g. one GPU out of memory fails every rank with the same one line (that rank
    prints its traceback too), and no rank waits in a collective for a dead one."""
    torch.multiprocessing.spawn(_crash_on_rank_1, args=(str(tmp_path),), nprocs=2)
    want = "Hw2rtError: rank 1: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == [want, want]
    assert "Traceback" in capfd.readouterr().err


def _run(args, tmp_path, nproc=None):
    env = {**os.environ, "HW2RT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [str(HW2RT), *args] if nproc is None else [
        str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", str(HW2RT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def usps(tmp_path_factory):
    root = tmp_path_factory.mktemp("tr") / "hw2_data"
    synthesize(root, seed=0, sizes={"mnistm": 10, "usps": 300, "svhn": 10, "faces": 1}, progress=False)
    return root / "digits" / "usps" / "data"


def test_sharded_classify_writes_the_single_process_files(usps, tmp_path):
    common = ["classify", "--images", str(usps), "--backend", "ort", "--threads", "1", "--batch-size", "64"]
    one = _run([*common, "--out", str(tmp_path / "one.csv"), "--features", str(tmp_path / "one.npz")],
               tmp_path)
    assert one.returncode == 0, one.stderr
    for nproc in (2, 3):  # 5 chunks: 3 ranks do not divide them
        out, feats = tmp_path / f"p{nproc}.csv", tmp_path / f"p{nproc}.npz"
        r = _run([*common, "--out", str(out), "--features", str(feats)], tmp_path, nproc)
        assert r.returncode == 0, r.stderr[-2000:]
        assert _sha(out) == _sha(tmp_path / "one.csv") and _sha(feats) == _sha(tmp_path / "one.npz")
        assert r.stdout.count("classify (") == 1 and f"on {nproc} ranks" in r.stdout  # rank 0 reports


def test_a_bad_image_seen_by_one_rank_fails_every_rank_with_one_line(usps, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    names = sorted(p.name for p in usps.iterdir())
    for name in names:
        (bad / name).write_bytes((usps / name).read_bytes())
    (bad / names[100]).write_bytes(b"not a png")  # chunk 1 of 64: rank 1's
    out = tmp_path / "bad.csv"
    r = _run(["classify", "--images", str(bad), "--backend", "torch", "--threads", "1", "--batch-size", "64",
              "--out", str(out)], tmp_path, 2)
    assert r.returncode != 0 and not out.exists()
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and all(line.startswith(f"Error: rank 1: {bad / names[100]}") for line in errors)


def _files(root):
    """sha256 of every file under `root`, by relative path."""
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The export cache of the sampler runs: each graph exported once."""
    return tmp_path_factory.mktemp("shared")


DIGITS = ["ddpm", "--sampler", "ddim", "--steps", "3", "--per-digit", "3", "--batch-size", "4",
          "--threads", "1"]


def test_sharded_ddpm_writes_the_single_process_digits_grid_and_frames(shared, tmp_path):
    files = {}
    for nproc in (None, 2, 3):  # 8 batches of 4: 3 ranks do not divide them
        out = tmp_path / f"p{nproc or 1}"
        r = _run([*DIGITS, "--out", str(out / "digits"), "--grid", str(out / "grid.png"),
                  "--frames", str(out / "frames.png")], shared, nproc)
        assert r.returncode == 0, r.stderr[-2000:]
        files[nproc] = _files(out)
        assert r.stdout.count("ddpm (") == 1 and (nproc is None or f"on {nproc} ranks" in r.stdout)
    assert len(files[None]) == 30 + 2 and files[2] == files[None] and files[3] == files[None]


def test_sharded_few_step_solver_writes_the_single_process_digits(shared, tmp_path):
    """A multistep solver under torchrun: each rank solves its share of the batches, the same files."""
    solver = ["ddpm", "--sampler", "unipc", "--steps", "3", "--per-digit", "2", "--batch-size", "4",
              "--threads", "1"]
    files = {}
    for nproc in (None, 2):
        r = _run([*solver, "--out", str(tmp_path / f"p{nproc or 1}")], shared, nproc)
        assert r.returncode == 0, r.stderr[-2000:]
        files[nproc] = _files(tmp_path / f"p{nproc or 1}")
    assert len(files[None]) == 20 and files[2] == files[None]


FACES = ["--steps", "2", "--threads", "1"]
DDIM = ["ddim", *FACES, "--eta", "0.5", "--batch-size", "2", "--eta-grid", "0,1"]  # 5 noises: 3 batches of 2


def _ddim(noise, gt, out, shared, nproc=None):
    return _run([*DDIM, "--noise-dir", str(noise), "--gt-dir", str(gt), "--out", str(out / "faces"),
                 "--grid", str(out / "grid.png")], shared, nproc)


def _interp(noise, out, shared, nproc=None):
    return _run(["interp", *FACES, "--noise-dir", str(noise), "--out", str(out / "interp.png")], shared,
                nproc)


@pytest.fixture(scope="module")
def faces(shared, tmp_path_factory):
    """5 noise files (32x32, the bundled face UNet's smallest size), references of their size, and the
    files of one process's ddim and interp runs."""
    root = tmp_path_factory.mktemp("faces")
    (root / "noise").mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(5):
        torch.save(torch.randn(1, 3, 32, 32, generator=g), root / "noise" / f"{i:02d}.pt")
        write_png(np.full((32, 32, 3), 50 * i, np.uint8), root / "gt" / f"{i:02d}.png")
    for r in (_ddim(root / "noise", root / "gt", root / "one", shared),
              _interp(root / "noise", root / "one", shared)):
        assert r.returncode == 0, r.stderr[-2000:]
    return root


def test_sharded_ddim_writes_the_single_process_faces_mse_and_eta_grid(faces, shared, tmp_path):
    r = _ddim(faces / "noise", faces / "gt", tmp_path, shared, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    one = {k: v for k, v in _files(faces / "one").items() if k != "interp.png"}
    assert len(one) == 5 + 2 and _files(tmp_path) == one  # NN.png, mse.json, the grid
    assert r.stdout.count("ddim (") == 1 and "on 2 ranks" in r.stdout and r.stdout.count("mean MSE") == 1


def test_sharded_interp_writes_the_single_process_png(faces, shared, tmp_path):
    r = _interp(faces / "noise", tmp_path, shared, 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _sha(tmp_path / "interp.png") == _sha(faces / "one" / "interp.png")
    assert r.stdout.count("interp: ") == 1 and "on 2 ranks" in r.stdout


def test_a_bad_noise_file_seen_by_one_rank_fails_every_rank_before_any_output(faces, shared, tmp_path):
    bad = tmp_path / "noise"
    bad.mkdir()
    for p in (faces / "noise").iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "02.pt").write_bytes(b"not a tensor")  # batch 1 of 2: rank 1's
    r = _ddim(bad, faces / "gt", tmp_path / "out", shared, 2)
    assert r.returncode != 0 and not (tmp_path / "out").exists()  # no face, no mse.json, no grid
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2 and all(line.startswith(f"Error: rank 1: {bad / '02.pt'}") for line in errors)
