"""The one error type users see: a readable, one-line message that names the file at fault."""


class Hw2rtError(Exception):
    """Bad input or an unusable artefact. The CLI prints `error: <message>` and exits with status 1."""


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The first line of an exception's message (its type name when it has none), at most `limit` characters:
    what a one-line error quotes of a library's multi-line one."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
