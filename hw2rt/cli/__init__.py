"""The `hw2rt` command line: a thin click group over the packages. No logic lives here.

One module per concern registers its commands on `main` (cli/group.py): data.py (inspect, data synth),
jobs.py (the engine commands), training.py (train, eval-digits, tsne), bench.py.
"""
from hw2rt.cli import bench, data, jobs, training  # noqa: F401 -- importing them registers their commands
from hw2rt.cli.group import main

__all__ = ["main"]
