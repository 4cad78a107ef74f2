"""The `hw2rt` command line: a thin click group over the packages. No logic lives here."""
import json

import click

from hw2rt.errors import Hw2rtError


class _Group(click.Group):
    """Turns Hw2rtError into click's one-line `Error: ...` and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Hw2rtError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """hw2rt: fast, validated inference for the HW2 networks (DDPM digits, DDIM faces, DANN)."""


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Choice(["face_unet", "digit_unet", "dann", "digit_classifier"]), default=None,
              help="The network the file must hold (default: recognise it).")
def inspect(checkpoint, model):
    """Load CHECKPOINT strictly and print which network it holds, its config and size."""
    from hw2rt.checkpoints import file_sha256, load_model

    net, name, config = load_model(checkpoint, model)
    n_params = sum(p.numel() for p in net.parameters())
    click.echo(json.dumps({"file": checkpoint, "model": name, "config": config, "parameters": n_params,
                           "state_dict_entries": len(net.state_dict()), "sha256": file_sha256(checkpoint)}, indent=2))
