"""README.md and docs/*.md: the README stays a quick start, and what the pages quote still holds.

- README.md is under 10,000 characters, with `make demo` and `make test` on its first screen, and links
  every docs/ page.
- Every `hw2rt ...` command (in ```bash blocks, after `torchrun ... $(which hw2rt)` too, and in inline code)
  parses against the real click CLI: the subcommand exists, and `make_context` accepts its options and
  values (unknown options, bad choices and out-of-range numbers fail; nothing runs). Commands in blocks
  must also be complete (required options given); inline ones may name a command without them.
- Every `bash`/`make`/`.venv/bin/python` line names a file or Makefile target that exists; every repository
  path and `hw2rt.module.NAME` quoted in code exists; Python blocks compile.
- Every relative link and image resolves to a file, and a `#anchor` to a heading of that page.
"""
import re
import shlex
from pathlib import Path

import click
import pytest

from hw2rt.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"^(hw2rt|scripts|benchmarks|tests|docs)/[\w./-]*$")
DOTTED = re.compile(r"^hw2rt(\.\w+)+$")


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def _blocks(text):
    """(language, body) of every fenced block."""
    return FENCE.findall(text)


def _prose(text):
    return FENCE.sub("", text)


def _shell_lines(body):
    """The logical lines of a shell block: continuations joined, comments dropped, split into words."""
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line.replace("$(which hw2rt)", "hw2rt"), comments=True)
        if words:
            yield words


def _bash_lines(text):
    for lang, body in _blocks(text):
        if lang in ("bash", "sh"):
            yield from _shell_lines(body)


def _hw2rt_commands(text):
    """(args after `hw2rt`, complete?) for every hw2rt command the page quotes."""
    for words in _bash_lines(text):
        if "hw2rt" in words and words[0] in ("hw2rt", "torchrun"):
            yield words[words.index("hw2rt") + 1:], True
    for span in SPAN.findall(_prose(text)):
        if span.startswith("hw2rt "):
            yield shlex.split(span)[1:], False


def _parse(args, complete):
    """Parse `hw2rt ARGS` as click would, without running it."""
    cmd, name, parent = main, "hw2rt", None
    while isinstance(cmd, click.Group) and args and not args[0].startswith("-"):
        ctx = click.Context(cmd, info_name=name, parent=parent)
        sub = cmd.get_command(ctx, args[0])
        assert sub is not None, f"no command {args[0]!r} under {name}"
        cmd, name, parent, args = sub, args[0], ctx, args[1:]
    if isinstance(cmd, click.Group) and not args:
        assert not complete, f"{name}: a group, not a command"
        return
    required = [p for p in cmd.params if p.required]
    try:
        if not complete:  # an inline mention may leave out what the command requires
            for p in required:
                p.required = False
        cmd.make_context(name, list(args), parent=parent)
    except click.exceptions.Exit as exc:  # --help
        assert exc.exit_code == 0
    finally:
        for p in required:
            p.required = True


def _slug(heading):
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page):
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", _prose(page.read_text()), re.MULTILINE)}


def test_readme_is_a_quick_start():
    text = README.read_text()
    assert len(text) < 10_000, len(text)
    first_screen = text[:3000]
    assert "make demo" in first_screen and "make test" in first_screen
    linked = {(README.parent / t.split("#")[0]).resolve() for t in LINK.findall(text)}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"README does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_hw2rt_command_parses(page):
    commands = list(_hw2rt_commands(page.read_text()))
    for args, complete in commands:
        try:
            _parse(args, complete)
        except (click.ClickException, AssertionError) as exc:
            pytest.fail(f"{page.name}: hw2rt {shlex.join(args)}: {getattr(exc, 'message', exc)}")


def test_the_pages_quote_commands():
    """The collector finds what it should: a guard against a regex that silently matches nothing."""
    readme = list(_hw2rt_commands(README.read_text()))
    assert sum(complete for _, complete in readme) >= 5
    scale_out = list(_hw2rt_commands((ROOT / "docs" / "scale-out.md").read_text()))
    assert any(args[:2] == ["train", "face"] for args, _ in scale_out)  # after `torchrun ... $(which hw2rt)`


@pytest.mark.parametrize("bad", [
    ["ddpm", "--out", "d", "--sampler", "euler"],  # not a choice
    ["ddpm", "--out", "d", "--bogus"],  # no such option
    ["ddpm", "--per-digit", "1"],  # --out missing
    ["ddpm", "--out", "d", "--per-digit", "0"],  # out of range
    ["nope"],  # no such command
    ["data", "synth", "--out", "d", "-x"],
])
def test_a_bad_command_fails_to_parse(bad):
    with pytest.raises((click.ClickException, AssertionError)):
        _parse(bad, complete=True)


def test_shell_lines_name_what_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    for page in PAGES:
        for words in _bash_lines(page.read_text()):
            where = f"{page.name}: {shlex.join(words)}"
            if words[0] in ("bash", ".venv/bin/python"):
                assert (ROOT / words[1]).is_file(), where
            elif words[0] == "make":
                assert all(w in targets for w in words[1:] if "=" not in w), where
            else:
                assert words[0] in ("hw2rt", "torchrun", ".venv/bin/pip"), f"unchecked command: {where}"
        for span in SPAN.findall(_prose(page.read_text())):
            if span.startswith("make "):
                words = [w for w in span.split()[1:] if "=" not in w]
                assert all(w in targets for w in words), f"{page.name}: {span}"


def _code_words(text):
    for span in SPAN.findall(_prose(text)):
        yield from span.replace("(", " ").replace(")", " ").replace(",", " ").split()
    for _, body in _blocks(text):
        yield from body.replace("(", " ").replace(")", " ").replace(",", " ").split()


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_quoted_paths_and_names_exist(page):
    for word in set(_code_words(page.read_text())):
        word = word.rstrip(".:;")
        if REPO_PATH.match(word):
            assert (ROOT / word).exists(), f"{page.name}: {word}"
        elif DOTTED.match(word):
            parts = word.split(".")
            for i in range(len(parts), 0, -1):
                base = ROOT.joinpath(*parts[:i])
                module = base.with_suffix(".py")
                module = module if module.is_file() else base / "__init__.py"
                if module.is_file():
                    for name in parts[i:i + 1]:
                        assert re.search(rf"\b{name}\b", module.read_text()), f"{page.name}: {word}"
                    break
            else:
                pytest.fail(f"{page.name}: {word}: no such module")


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_python_blocks_compile(page):
    for lang, body in _blocks(page.read_text()):
        if lang == "python":
            compile(body, str(page), "exec")


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_file(), f"{page.name}: {target}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: {target}: no such heading"


def test_every_docs_image_is_shown():
    shown = {(p.parent / t).resolve() for p in PAGES for t in LINK.findall(p.read_text())}
    for image in (ROOT / "docs").glob("*.png"):
        assert image.resolve() in shown, image.name
