"""The `hw2rt` click group: every command module registers on `main`."""
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
