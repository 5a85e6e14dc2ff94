"""The README and its pages (docs/, ansible/README.md): the quick start
and the recipes run as written (their systemd commands run in the booted
systemd, tests/booted/).

A fenced block preceded by ``<!-- readme-test: NAME -->`` is taken from the
page verbatim: the quick start's commands are run in a shell in the
checkout (``make demo`` in one session, the second terminal's commands in
another), each app recipe is saved as ``app.py`` and served under
start_server with reloads under load.  A marker without a block, or a test
of this file without its block, fails."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.apps import APPS, documentation_pages, readme_blocks
from harness.http_clients import http_get
from harness.load import KeepAliveLoad, aborted_on_close, reloading, run_ab
from harness.processes import (
    START_SERVER,
    as_a_user_runs_it,
    free_port,
    reloads_done,
    restart,
    run_shell,
    running,
    worker_env,
)

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = readme_blocks()
RECIPES = ["asyncio-recipe"]
# Run in the booted systemd (tests/booted/).
BOOTED = ["template-units", "gunicorn-unit-lines", "own-app-units"]
# ansible/README.md: its inventory and commands here; its HAProxy backend
# and a failed host's message are test_fleet.py's.
FLEET = ["fleet-inventory", "fleet-commands", "fleet-haproxy", "fleet-failure"]
# docs/go.md: test_go_recipe.py and booted/test_go_app.py.
GO = ["go-app", "go-build", "go-run", "go-reload", "go-unit-lines"]
# Each command block, the test app that stands for its ``myapp``, and the
# port the command names.
COMMANDS = {
    "gunicorn-command": ("wsgi_app.py", 8000),
    "uvicorn-commands": ("asgi_app.py", 8000),
    "aiohttp-command": ("aiohttp_app.py", 8080),
}


def test_every_fenced_block_is_marked_and_every_marked_block_is_run() -> None:
    assert set(BLOCKS) == {
        "quick-start-serve",
        "quick-start-reload",
        "listener-api",
        "starman-command",
        "proxy-settings",
        "keep-alive-recipe",
        "http-server-recipe",
        *RECIPES,
        *BOOTED,
        *FLEET,
        *GO,
        *COMMANDS,
    }
    unmarked = {}
    for page in documentation_pages():
        text = page.read_text()
        fenced = re.findall(r"^```\w*\n.*?^```$", text, re.M | re.S)
        if len(fenced) > text.count("<!-- readme-test:"):
            unmarked[page.relative_to(ROOT).as_posix()] = len(fenced) - text.count(
                "<!-- readme-test:"
            )
    # What is left is no command: the deploy's directory layout
    # (test_reload.py deploys so), and lestrrat-go's listener, which Debian
    # does not package and these tests' machines cannot fetch.
    assert unmarked == {"README.md": 1, "docs/go.md": 1}, unmarked
    assert "listener.ListenAll()" in (ROOT / "docs" / "go.md").read_text()


def commands_of(block: str) -> list[str]:
    """A shell block's commands, each continued line joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_quick_start_as_written() -> None:
    """`make demo` in one terminal; curl, reload, curl in a second; Ctrl-C."""
    # A person's shell: no socket activation, and not inside another make
    # (whose variables would make this one print its directory on exit).
    inherited = ("LISTEN_", "NOTIFY_", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKE_TERM")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    # Daemon: its own process group (as a terminal's job), its output read
    # as it comes.
    with running(["sh", "-c", BLOCKS["quick-start-serve"]], env=env, cwd=ROOT) as demo:
        try:
            demo.wait_for(r"\(generation 1\) is ready", timeout=120)
            second = run_shell(BLOCKS["quick-start-reload"], ROOT, env, timeout=60)
        finally:
            os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C sends the terminal's job
        demo.wait(60)
        output = demo.output()
    assert second.returncode == 0, second.stderr
    assert re.findall(r"(?i)^x-server-starter-generation: (\d+)", second.stdout, re.M) == [
        "1",
        "2",
    ], second.stdout
    assert "generation 2 is serving; sent TERM to worker" in second.stderr
    assert "received INT, sending TERM to all workers:" in output
    assert output.rstrip().endswith("exiting"), output[-2000:]
    assert not (ROOT / "demo.pid").exists()


def app_py_command_line(program: str, directory: Path) -> tuple[list[str], int, Path]:
    """start_server's command line running ``program`` saved as app.py, as
    the recipes say to run it: the argv, its port and its pid file."""
    (directory / "app.py").write_text(program)
    port, pid_file = free_port(), directory / "pid"
    argv = [
        START_SERVER,
        f"--port=127.0.0.1:{port}",
        f"--pid-file={pid_file}",
        f"--dir={directory}",
        "--require-notify",
        "--",
        sys.executable,
        "app.py",
    ]
    return argv, port, pid_file


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_as_written_reloads_under_load_without_a_failure(
    name: str, tmp_path: Path
) -> None:
    argv, port, pid_file = app_py_command_line(BLOCKS[name], tmp_path)
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        with reloading(lambda: restart(pid_file), every=0.5):
            figures = run_ab(f"http://127.0.0.1:{port}/", 6000, 100, tmp_path)
        reloads = reloads_done(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert "Traceback" not in daemon.output()
    assert figures["requests"] == 6000
    assert (figures["failed"], figures["non_2xx"], figures["resets"]) == (0, 0, 0), figures
    assert reloads >= 3


@pytest.mark.parametrize("name", COMMANDS)
def test_an_adapter_command_as_written_reloads_under_load_without_a_failure(
    name: str, tmp_path: Path
) -> None:
    app, port = COMMANDS[name]
    (tmp_path / "myapp.py").write_text((APPS / app).read_text())
    commands = commands_of(BLOCKS[name])
    assert commands
    for command in commands:
        shell = ["sh", "-c", f"exec {command}"]
        with running(shell, env=as_a_user_runs_it(), cwd=tmp_path) as daemon:
            daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)", timeout=60)
            resets_before = aborted_on_close()
            with KeepAliveLoad(port, "/", threads=40) as load:
                for number in range(2, 5):
                    daemon.signal(signal.SIGHUP)
                    daemon.wait_for(rf"\(generation {number}\) is ready", timeout=60)
                    daemon.wait_for(r"^old worker \d+ died", count=number - 1, timeout=60)
            resets = aborted_on_close() - resets_before
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0
        assert "Traceback" not in daemon.output()
        assert load.failures == [], (command, load.failures[:5])
        assert (load.clean_closes, resets) == (0, 0), command
        assert load.served > 100, command


def keep_alive_clients_through_reloads(
    program: str, directory: Path, threads: int, reloads: int
) -> tuple[KeepAliveLoad, str]:
    """``program`` served as app.py under HTTP/1.1 clients through
    ``reloads`` reloads, each old generation gone within 30 s, then stopped
    with exit 0: the load's counts and the superdaemon's output."""
    argv, port, pid_file = app_py_command_line(program, directory)
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        with KeepAliveLoad(port, "/", threads=threads) as load:
            for _ in range(reloads):
                assert restart(pid_file).returncode == 0
            daemon.wait_for(r"^old worker \d+ died", count=reloads, timeout=30)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    return load, daemon.output()


def test_the_http_server_recipe_serves_across_reloads_and_stops(tmp_path: Path) -> None:
    """Clients through 3 reloads; then a stop that would hang (and SIGKILL
    after --stop-timeout) if shutdown() ran in the signal handler."""
    load, output = keep_alive_clients_through_reloads(
        BLOCKS["http-server-recipe"], tmp_path, threads=20, reloads=3
    )
    assert "Traceback" not in output
    assert load.failures == [], load.failures[:5]
    assert load.clean_closes == 0
    assert load.served > 100


def test_the_keep_alive_recipe_serves_kept_alive_clients_across_reloads(tmp_path: Path) -> None:
    load, _ = keep_alive_clients_through_reloads(
        BLOCKS["keep-alive-recipe"], tmp_path, threads=40, reloads=4
    )
    assert load.failures == [], load.failures[:5]
    assert load.clean_closes == 0  # no connection ended under a request
    assert load.served > 100
    assert load.connections < load.served  # connections were reused


def test_the_listener_api_as_written(tmp_path: Path) -> None:
    argv, port, _ = app_py_command_line(BLOCKS["listener-api"], tmp_path)
    with running(argv, env=worker_env()) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready \(READY=1\)")
        daemon.wait_for(rf"^\{{'127.0.0.1:{port}': 3\}}$")
    assert "Traceback" not in daemon.output()


@pytest.mark.skipif(shutil.which("starman") is None, reason="Debian's starman is not installed")
def test_the_starman_command_as_written(tmp_path: Path) -> None:
    (tmp_path / "app.psgi").write_text((APPS / "hello.psgi").read_text())
    [command] = commands_of(BLOCKS["starman-command"])
    shell = ["sh", "-c", f"exec {command}"]
    with running(shell, env=as_a_user_runs_it(), cwd=tmp_path) as daemon:
        daemon.wait_for(r"\(generation 1\) is ready", timeout=60)
        assert http_get(8080)[0] == 200
        daemon.signal(signal.SIGHUP)
        daemon.wait_for(r"\(generation 2\) is ready", timeout=60)
        daemon.wait_for(r"^old worker \d+ died", timeout=60)
        assert http_get(8080)[0] == 200


def test_the_proxy_settings_as_written_are_valid_for_nginx_and_haproxy(tmp_path: Path) -> None:
    nginx_part, haproxy_part = BLOCKS["proxy-settings"].split("# HAProxy\n")
    nginx_conf = tmp_path / "nginx.conf"
    temp = " ".join(
        f"{kind}_temp_path {tmp_path}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    nginx_conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n{temp}\naccess_log off;\n{nginx_part}}}\n"
    )
    nginx = subprocess.run(
        ["nginx", "-t", "-q", "-c", str(nginx_conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert nginx.returncode == 0, nginx.stderr
    haproxy_conf = tmp_path / "haproxy.cfg"
    haproxy_conf.write_text(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n"
        "    timeout server 60s\nfrontend web\n    bind 127.0.0.1:8081\n    default_backend app\n"
        + haproxy_part
    )
    haproxy = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(haproxy_conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert haproxy.returncode == 0, haproxy.stdout + haproxy.stderr


def test_the_fleet_commands_as_written_deploy_to_the_inventorys_hosts(tmp_path: Path) -> None:
    """Each "Many hosts" command, run from the checkout against the README's
    inventory with --list-hosts (which connects to no host): the playbook,
    its options and the inventory parse, and every host is in the play
    (test_fleet.py runs the deploys, a host at a time)."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    if not playbook.exists():
        pytest.skip("ansible-core missing (make deps)")
    (tmp_path / "inventory.yml").write_text(BLOCKS["fleet-inventory"])
    (tmp_path / "ansible").symlink_to(ROOT / "ansible")
    commands = commands_of(BLOCKS["fleet-commands"])
    assert len(commands) == 3
    env = {**as_a_user_runs_it(), "ANSIBLE_HOME": str(tmp_path / "home")}
    for command in commands:
        argv = command.split()
        assert argv[0] == "ansible-playbook"
        listed = subprocess.run(
            [str(playbook), *argv[1:], "--list-hosts"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "Deploy an app under server-starter, host by host" in listed.stdout
        hosts = listed.stdout.partition("hosts (3):")[2].split()
        assert sorted(hosts) == ["web1", "web2", "web3"], listed.stdout
