"""Under torchrun (gloo, 2-3 CPU processes): the sharded classify job writes the files one process writes,
and a bad input seen by one rank fails every rank with one line, leaving no output."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hw2rt.data.synth import synthesize
from hw2rt.distributed import World

BIN = Path(sys.executable).parent
HW2RT, TORCHRUN = BIN / "hw2rt", BIN / "torchrun"


def test_each_rank_takes_the_single_process_chunks_round_robin():
    chunks = [World(r, 3).chunks(10, 3) for r in range(3)]
    assert chunks == [[(0, 3), (9, 10)], [(3, 6)], [(6, 9)]]
    assert World().chunks(10, 4) == [(0, 4), (4, 8), (8, 10)] and World(5, 6).chunks(10, 4) == []


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
