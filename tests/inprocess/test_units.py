"""The metrics' lines in the shipped units, against the drop-in the package
ships to turn them on (examples/app.service.d/metrics.conf): the drop-in is
the unit's commented lines, with the unit's ExecStart= and ExecStopPost=
kept, so that it changes nothing else."""

from __future__ import annotations

import re
from pathlib import Path

UNITS = Path(__file__).resolve().parents[2] / "units"
METRICS_PATH = "/run/app/metrics.prom"
METRICS_FILE = f"--metrics-file={METRICS_PATH} --metrics-label=unit=%n"


def values(text: str, key: str, commented: bool = False) -> list[str]:
    """Every value of ``key=``, in order (a commented-out one with ``commented``)."""
    prefix = "#" if commented else ""
    return re.findall(rf"^{prefix}{key}=(.*)$", text, re.M)


def test_the_metrics_drop_in_is_the_units_commented_lines_and_changes_nothing_else() -> None:
    unit = (UNITS / "app.service").read_text()
    dropin = (UNITS / "app.service.d" / "metrics.conf").read_text()
    (exec_start,) = values(unit, "ExecStart")
    program, _, options = exec_start.partition(" ")
    assert values(dropin, "ExecStart") == ["", f"{program} {METRICS_FILE} {options}"]
    (link,) = values(unit, "ExecStartPost", commented=True)
    assert values(dropin, "ExecStartPost") == [link]
    assert link.endswith(f" {METRICS_PATH} /var/lib/prometheus/node-exporter/app.prom")
    (unlink,) = values(unit, "ExecStopPost", commented=True)
    assert values(dropin, "ExecStopPost") == ["", unlink, *values(unit, "ExecStopPost")]
    assert values(dropin, "ExecReload") == values(dropin, "RuntimeDirectory") == []


def test_the_template_links_each_instance_as_app_service_does() -> None:
    unit = (UNITS / "app.service").read_text()
    template = (UNITS / "app@.service").read_text()
    for key in ("ExecStartPost", "ExecStopPost"):
        expected = [
            line.replace("/run/app/", "/run/app-%i/").replace("/app.prom", "/app-%i.prom")
            for line in values(unit, key, commented=True)
        ]
        assert values(template, key, commented=True) == expected
    assert "--metrics-file=/run/app-%i/metrics.prom --metrics-label=unit=%n" in template
    (runtime_directory,) = values(template, "RuntimeDirectory")
    assert runtime_directory == "app-%i"
