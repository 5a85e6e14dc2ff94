"""The documentation names every option the command line has, and no other:
the man page gives each its own entry, the README lists each.  Every link
between the README and its pages reaches a file and a heading that exist."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from harness.apps import documentation_pages
from server_starter.superdaemon.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
MAN_PAGE = ROOT / "packaging" / "debian" / "start_server.1"
README = ROOT / "README.md"
PAGES = documentation_pages()
LINK = re.compile(r"\]\(([^()\s]+)\)")
FENCED = re.compile(r"^```.*?^```$", re.M | re.S)


def parser_options() -> set[str]:
    return {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--")
    }


def test_the_man_page_has_an_entry_for_every_option() -> None:
    text = MAN_PAGE.read_text()
    # An entry is a .TP paragraph whose tag line starts with the option.
    entries = set(re.findall(r"^\.TP\n\.BI? (\\-\\-[a-z\\-]+)", text, re.MULTILINE))
    documented = {entry.replace("\\-", "-") for entry in entries}
    assert documented == parser_options()


def test_the_man_page_synopsis_names_every_command() -> None:
    synopsis = MAN_PAGE.read_text().split(".SH SYNOPSIS", 1)[1].split(".SH", 1)[0]
    for command in ("--restart", "--upgrade", "--stop"):
        assert command.replace("-", "\\-") in synopsis


def test_the_readme_names_every_option() -> None:
    text = README.read_text()
    missing = {
        option
        for option in parser_options()
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)
    }
    assert not missing


def anchor(heading: str) -> str:
    """A heading's anchor as the forges render Markdown: lower case, no
    punctuation but hyphens and underscores, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache  # a page is linked to many times: read it once
def anchors(page: Path) -> set[str]:
    text = FENCED.sub("", page.read_text())
    return {anchor(heading) for heading in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_link_between_the_pages_reaches_a_file_and_a_heading() -> None:
    assert anchor("Watching it: `--status` and metrics") == "watching-it---status-and-metrics"
    broken = []
    for page in PAGES:
        fences = re.findall(r"^```", page.read_text(), re.M)
        if len(fences) % 2:
            broken.append(f"{page.relative_to(ROOT)}: a fenced block is never closed")
        for target in LINK.findall(FENCED.sub("", page.read_text())):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif fragment and fragment not in anchors(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading")
    assert not broken, "\n".join(broken)
