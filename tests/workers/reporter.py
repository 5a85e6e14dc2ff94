"""A worker that reports what it inherited, for contract tests.

Writes $REPORT_DIR/report-<pid>.json (environment and every open descriptor,
with socket family, type and address), appends each signal it receives to
$REPORT_DIR/signals-<pid>.log, and exits on any signal not listed in
$REPORTER_IGNORE (comma separated names, e.g. "TERM").  With
REPORTER_NOTIFY=1 it sends READY=1 to $NOTIFY_SOCKET after reporting.
Standard library only, so it runs under any start_server.
"""

import json
import os
import signal
import socket
import sys

OUT = os.environ["REPORT_DIR"]
PID = os.getpid()
IGNORE = {name for name in os.environ.get("REPORTER_IGNORE", "").split(",") if name}
KINDS = {socket.SOCK_STREAM: "stream", socket.SOCK_DGRAM: "dgram"}
FAMILIES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix"}


def describe(fd: int) -> dict[str, object] | None:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None  # the descriptor listdir itself used
    info: dict[str, object] = {"target": target}
    if target.startswith("socket:"):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            info["family"] = FAMILIES.get(sock.family, str(sock.family))
            info["type"] = KINDS.get(sock.type, str(sock.type))
            name = sock.getsockname()
            info["address"] = list(name[:2]) if isinstance(name, tuple) else str(name)
            if sock.type == socket.SOCK_STREAM:
                info["listening"] = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        finally:
            sock.close()
    return info


def on_signal(number: int, _frame: object) -> None:
    name = signal.Signals(number).name.removeprefix("SIG")
    with open(os.path.join(OUT, f"signals-{PID}.log"), "a") as f:
        f.write(name + "\n")
    if name not in IGNORE:
        sys.exit(0)


def main() -> None:
    for number in (
        signal.SIGHUP,
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ):
        signal.signal(number, on_signal)
    fds = {}
    for entry in os.listdir("/proc/self/fd"):
        info = describe(int(entry))
        if info is not None:
            fds[entry] = info
    report = {"pid": PID, "env": dict(os.environ), "fds": fds}
    temporary = os.path.join(OUT, f".report-{PID}.tmp")
    with open(temporary, "w") as f:
        json.dump(report, f)
    os.rename(temporary, os.path.join(OUT, f"report-{PID}.json"))
    if os.environ.get("REPORTER_NOTIFY") == "1":
        address = os.environ["NOTIFY_SOCKET"]
        if address.startswith("@"):
            address = "\0" + address[1:]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
    if os.environ.get("REPORTER_EXIT") is not None:
        sys.exit(int(os.environ["REPORTER_EXIT"]))
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
