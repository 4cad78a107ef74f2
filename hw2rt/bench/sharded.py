"""The sharded digit job: `hw2rt ddpm` on 1 process and under `torchrun` on N, side by side.

Every run writes the same files (checked by hash); the figure is each run's wall time, the process start
and the engine's open included, as a user sees it. Used by `benchmarks/sharded_digits.py` (CPU processes)
and by the gpu suite (one process per GPU; skipped with a reason on one GPU).
"""
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hw2rt.errors import Hw2rtError


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.png")):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def sharded_digit_job(processes: list[int], *, device: str = "cpu", per_digit: int = 100, steps: int = 50,
                      batch_size: int | None = None, backend: str = "auto", threads: int | None = 1,
                      cache_dir=None, repeats: int = 1, log=print) -> list[dict]:
    """One row per world size in `processes`: {processes, wall_s (the median of `repeats` runs),
    walls_s, speedup (vs the first), identical (same PNG bytes as the first, every run)}.
    The digit job: guided DDIM `steps`, eta 1, `per_digit` x 10 digits, in the `ddpm` command's own
    batches unless `batch_size` is given."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="hw2rt-sharded-") as tmp:
        env = {**os.environ, "HW2RT_CACHE": str(cache_dir or Path(tmp) / "cache")}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)

        def job(n, out, per_digit, steps):
            args = ["ddpm", "--sampler", "ddim", "--steps", str(steps), "--eta", "1", "--per-digit",
                    str(per_digit), "--backend", backend, "--device", device,
                    "--out", str(out / "digits"), "--grid", str(out / "grid.png")]
            if batch_size:  # else the command's own default, as a user runs it
                args += ["--batch-size", str(batch_size)]
            if threads:
                args += ["--threads", str(threads)]
            launch = [sys.executable, "-m", "hw2rt"] if n == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                "-m", "hw2rt"]
            t0 = time.perf_counter()
            r = subprocess.run(launch + args, capture_output=True, text=True, env=env, check=False)
            if r.returncode != 0:
                raise Hw2rtError(f"the digit job on {n} process(es) failed: {r.stderr.strip()[-300:]}")
            return time.perf_counter() - t0

        job(1, Path(tmp) / "warm-up", 1, 1)  # the export cache filled before any run is timed
        walls = {n: [] for n in processes}
        digests = {}
        for r in range(repeats):  # world sizes alternate, so a busy spell slows each about alike
            for n in processes:
                out = Path(tmp) / f"r{r}-p{n}"
                walls[n].append(job(n, out, per_digit, steps))
                digests.setdefault(n, set()).add(_digest(out))
                log(f"  {n} process(es), run {r + 1}/{repeats}: {walls[n][-1]:.1f} s")
        first = processes[0]
        for n in processes:
            wall = statistics.median(walls[n])
            row = {"processes": n, "wall_s": round(wall, 2), "walls_s": [round(w, 2) for w in walls[n]],
                   "speedup": round(statistics.median(walls[first]) / wall, 3),
                   "identical": digests[n] == digests[first] and len(digests[n]) == 1,
                   "digest": min(digests[n])}
            rows.append(row)
            log(f"  {n} process(es): median {wall:.1f} s, x{row['speedup']:.2f}, "
                f"{'identical files' if row['identical'] else 'FILES DIFFER'}")
    return rows
