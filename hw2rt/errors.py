"""The one error type users see: a readable, one-line message that names the file at fault."""


class Hw2rtError(Exception):
    """Bad input or an unusable artefact. The CLI prints `error: <message>` and exits with status 1."""
