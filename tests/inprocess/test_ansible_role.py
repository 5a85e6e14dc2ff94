"""The Ansible role's files against what they are made from: its unit
templates are the shipped units with names and command filled in, and its
defaults are the variables its argument specification documents."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from harness.apps import readme_blocks

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "ansible" / "roles" / "server_starter"
UNITS = ROOT / "units"


def defaults() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return loaded


def specification() -> dict[str, Any]:
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options: dict[str, Any] = specs["argument_specs"]["main"]["options"]
    return options


def render(template: str, **variables: Any) -> str:
    # The template module's settings: blocks trimmed, the last newline kept.
    environment = jinja2.Environment(
        trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    text = (ROLE / "templates" / template).read_text()
    return environment.from_string(text).render(ansible_managed="Ansible managed", **variables)


@pytest.mark.parametrize("unit", ["app.socket", "app.service", "app@.socket", "app@.service"])
def test_a_unit_template_with_the_shipped_settings_is_the_shipped_unit(unit: str) -> None:
    """Named "app", running the example app without a release, each template
    renders the unit the package ships, line for line, under its header."""
    variables = {
        **defaults(),
        "server_starter_command": "/usr/bin/server-starter-example",
        "server_starter_root": "/srv/app",
    }
    header, _, rendered = render(f"{unit}.j2", **variables).partition("\n")
    assert header == f"# Ansible managed: role server_starter, from the shipped units/{unit}"
    assert rendered == (UNITS / unit).read_text()


def test_a_release_runs_in_the_current_directory_and_names_follow_the_app() -> None:
    rendered = render(
        "app.service.j2",
        **{
            **defaults(),
            "server_starter_app": "shop",
            "server_starter_command": "./run",
            "server_starter_release": "2026-12-03",
            "server_starter_root": "/srv/shop",
        },
    )
    assert (
        "ExecStart=/usr/bin/server-starter --require-notify --ready-timeout=60 "
        "--stop-timeout=80 --dir=/srv/shop/current --envdir=/etc/shop/env -- ./run\n"
    ) in rendered
    assert "Requires=shop.socket\nAfter=shop.socket\n" in rendered
    assert "RuntimeDirectory=shop\n" in rendered
    listen = ["10.0.0.5:80", "/run/shop.sock"]
    socket = render("app.socket.j2", **{**defaults(), "server_starter_listen": listen})
    assert "ListenStream=10.0.0.5:80\nListenStream=/run/shop.sock\n" in socket


def test_every_default_is_documented_with_its_value() -> None:
    spec = specification()
    documented = {name for name, option in spec.items() if not option.get("required")}
    assert set(defaults()) == documented
    assert {name for name, option in spec.items() if option.get("required")} == {
        "server_starter_command"
    }
    for name, value in defaults().items():
        if name != "server_starter_root":  # documented as /srv/APP, templated from the name
            assert spec[name]["default"] == value, name
        assert spec[name]["description"], name


def test_the_roles_readme_documents_every_variable_and_uses_only_those() -> None:
    guide = (ROOT / "ansible" / "README.md").read_text()
    table = re.findall(r"^\| `(server_starter_\w+)` \|", guide, re.M)
    assert table == list(specification())
    inventory = yaml.safe_load(readme_blocks()["fleet-inventory"])
    group = inventory["server_starter"]  # deploy.yml's hosts
    assert {name for name in group["vars"] if name.startswith("server_starter")} <= set(table)
    assert (
        "hosts: \"{{ server_starter_hosts | default('server_starter') }}\""
        in (ROOT / "ansible" / "deploy.yml").read_text()
    )
