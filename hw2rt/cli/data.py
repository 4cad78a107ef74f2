"""`hw2rt inspect` and `hw2rt data synth`: what a checkpoint holds, and the offline stand-in tree."""
import json
from pathlib import Path

import click

from hw2rt import options
from hw2rt.cli.group import main
from hw2rt.errors import Hw2rtError


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Choice(options.MODELS), default=None,
              help="The network the file must hold (default: recognise it).")
def inspect(checkpoint, model):
    """Load CHECKPOINT strictly and print which network it holds, its config and size."""
    from hw2rt.checkpoints import file_sha256, load_model

    net, name, config = load_model(checkpoint, model)
    n_params = sum(p.numel() for p in net.parameters())
    click.echo(json.dumps({"file": checkpoint, "model": name, "config": config, "parameters": n_params,
                           "state_dict_entries": len(net.state_dict()), "sha256": file_sha256(checkpoint)},
                          indent=2))


@main.group()
def data():
    """Data helpers: offline stand-ins in the assignment's hw2_data/ layout."""


@data.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to create.")
@click.option("--mnist-idx", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder with full MNIST train-images-idx3-ubyte / train-labels-idx1-ubyte (.gz ok).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--n-mnistm", type=click.IntRange(min=1), default=None, help="Default: every source digit.")
@click.option("--n-usps", type=click.IntRange(min=1), default=None, help="Default: all 1,797 optdigits.")
@click.option("--n-svhn", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--n-faces", type=click.IntRange(1, 100), default=100, show_default=True)
@click.option("--noise-size", type=click.IntRange(min=32), default=32, show_default=True,
              help="Noise files are [1,3,S,S]; S must be a multiple of 32 for the face UNet.")
@click.option("--overwrite", is_flag=True, help="Replace a tree made earlier by this command.")
def synth(out, mnist_idx, seed, n_mnistm, n_usps, n_svhn, n_faces, noise_size, overwrite):
    """Build a stand-in hw2_data/ tree from offline sources (deterministic for a seed)."""
    from hw2rt.data.synth import format_summary, synthesize
    from hw2rt.io import check_outputs

    if noise_size % 32:
        raise click.BadParameter(f"{noise_size} is not a multiple of 32", param_hint="--noise-size")
    check_outputs(("--out", out, True))
    try:
        summary = synthesize(out, seed=seed, mnist_idx=mnist_idx, overwrite=overwrite, noise_size=noise_size,
                             sizes={"mnistm": n_mnistm, "usps": n_usps, "svhn": n_svhn, "faces": n_faces})
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise Hw2rtError(str(exc)) from None
    click.echo(format_summary(summary))


