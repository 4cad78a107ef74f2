"""The sharded digit job on CPU processes: `hw2rt ddpm` (guided DDIM, eta 1) on 1 process, then under
`torchrun` on 2, each process 1 thread; the world sizes alternate `--repeats` times, and the median wall
times are compared side by side, with the files' hashes.

    .venv/bin/python benchmarks/sharded_digits.py --per-digit 20 --steps 50 --batch-size 50
"""
import argparse
import json

from hw2rt.bench.sharded import sharded_digit_job


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", default="1,2")
    ap.add_argument("--per-digit", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = sharded_digit_job([int(n) for n in args.processes.split(",")], per_digit=args.per_digit,
                             steps=args.steps, batch_size=args.batch_size, backend=args.backend, threads=1,
                             repeats=args.repeats)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
