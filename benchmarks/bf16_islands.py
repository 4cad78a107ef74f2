"""Per-call time of the bundled face UNet's bf16 island policies against fp32, side by side, 1 thread.

    PYTHONPATH=. .venv/bin/python benchmarks/bf16_islands.py [SIZE BATCH ...]   # default 64 8 256 10

Candidates, all through `TorchEngine` (what `open_engine(..., backend="torch")` runs):
    fp32                  the reference (NCHW, the module as given)
    bf16, islands: time   the policy before the island search (the timestep embedding only)
    bf16, FP32_ISLANDS    engines/torch.py's bf16 islands (the search's result)
    fp32 in channels-last every top-level module an island: the bf16 engine's layout with no bf16 in it,
                          to tell the layout's share of the speed-up from bf16's
"""
import sys

import torch

from hw2rt.bench.measure import side_by_side
from hw2rt.checkpoints import ASSETS, load_model
from hw2rt.engines.torch import TorchEngine, fp32_islands
from hw2rt.models import get_spec

MODEL = "face_unet"


def main(args):
    torch.set_num_threads(1)
    sizes = [(int(a), int(b)) for a, b in zip(args[::2], args[1::2])] or [(64, 8), (256, 10)]
    net = load_model(ASSETS / f"{MODEL}.safetensors", MODEL)[0].float().eval()
    islands = fp32_islands(MODEL, "bf16")
    engines = {
        "fp32": TorchEngine(net, MODEL),
        "bf16, islands: time": TorchEngine(net, MODEL, precision="bf16", islands=["time"]),
        f"bf16, FP32_ISLANDS ({len(islands)})": TorchEngine(net, MODEL, precision="bf16"),
        "fp32 in channels-last": TorchEngine(net, MODEL, precision="bf16",
                                             islands=[n for n, _ in net.named_children()]),
    }
    print("| size | batch | " + " | ".join(engines) + " |")
    print("|---|---|" + "---|" * len(engines))
    for size, batch in sizes:
        feeds = get_spec(MODEL).example_inputs(batch, seed=1, height=size, width=size)
        times = side_by_side({k: (lambda e=e, f=feeds: e.run(f)) for k, e in engines.items()}, 5, "cpu")
        fp32 = times["fp32"]["median_ms"]
        cells = [f"{t['median_ms']:.0f} ms ({fp32 / t['median_ms']:.2f}x)" for t in times.values()]
        print(f"| {size}x{size} | {batch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
