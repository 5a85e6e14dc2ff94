"""The documentation names every option the command line has, and no other:
the man page gives each its own entry, the README lists each."""

from __future__ import annotations

import re
from pathlib import Path

from server_starter.superdaemon.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
MAN_PAGE = ROOT / "packaging" / "debian" / "start_server.1"
README = ROOT / "README.md"


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
