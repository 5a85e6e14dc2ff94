"""Who holds a socket address: the processes with a listening socket on a
port or a unix socket path, read from ``/proc`` (another user's processes
only when run as root).

Used when a bind fails, so the one-line error names the culprits: most often
the workers of an earlier start_server killed with SIGKILL, which keep the
listening socket they inherited and go on accepting on it as orphans.
"""

from __future__ import annotations

import socket

from . import procfs

TCP_LISTEN = "0A"  # the state column of /proc/net/tcp{,6}
UNIX_LISTENING = "00010000"  # __SO_ACCEPTCON in the flags of /proc/net/unix
MAX_NAMED = 5  # processes named in the one-line error


def of_port(host: str, port: int, udp: bool = False) -> list[tuple[int, str]]:
    """(pid, command line) of each process holding a socket that a bind to
    ``host``:``port`` collides with (TCP: listening): on that address, or a
    wildcard on either side; lowest pid first."""
    inodes = set()
    for table in ("udp", "udp6") if udp else ("tcp", "tcp6"):
        for fields in _table(table):
            (address, hex_port), state, inode = fields[1].rsplit(":", 1), fields[3], fields[9]
            if int(hex_port, 16) != port or not (udp or state == TCP_LISTEN):
                continue
            if _collides(host, _address(address)):
                inodes.add(inode)
    return _processes_with(inodes)


def _collides(host: str, held: str) -> bool:
    # A dual-stack socket shows an IPv4 address mapped (::ffff:a.b.c.d), and
    # its [::] takes IPv4 too; ours are IPv6-only, so [::] meets IPv6 alone.
    held = held.removeprefix("::ffff:")
    if ":" not in host:
        return held in (host, "0.0.0.0", "::") or (host == "0.0.0.0" and ":" not in held)
    return held in (host, "::") or (host == "::" and ":" in held)


def _address(hex_address: str) -> str:
    # /proc/net prints each 32-bit word of the address in host byte order.
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words)


def of_path(path: str) -> list[tuple[int, str]]:
    """(pid, command line) of each process holding a socket listening on the
    unix socket ``path``."""
    inodes = {
        fields[6]
        for fields in _table("unix")
        if len(fields) > 7 and fields[7] == path and fields[3] == UNIX_LISTENING
    }
    return _processes_with(inodes)


def describe(holders: list[tuple[int, str]], address: str, lookup: str) -> str:
    """The end of a one-line bind error: who holds ``address`` and what to do."""
    if not holders:
        return f"(the holder is not visible to this user: {lookup} names it)"
    named = ", ".join(f"pid {pid} ({command})" for pid, command in holders[:MAX_NAMED])
    more = f" and {len(holders) - MAX_NAMED} more" if len(holders) > MAX_NAMED else ""
    pids = " ".join(str(pid) for pid, _ in holders)
    return (
        f"{address} is held by {named}{more}; if these are the workers of a start_server "
        f"killed with SIGKILL, 'kill -TERM {pids}' lets them finish their requests and exit"
    )


def _table(name: str) -> list[list[str]]:
    try:
        with open(f"/proc/net/{name}") as table:
            return [line.split() for line in table.readlines()[1:]]
    except OSError:
        return []


def _processes_with(inodes: set[str]) -> list[tuple[int, str]]:
    wanted = {f"socket:[{inode}]" for inode in inodes if inode != "0"}
    if not wanted:
        return []
    return [
        (pid, _command_line(pid))
        for pid in procfs.other_processes()
        if procfs.descriptor_targets(pid) & wanted
    ]


def _command_line(pid: int, width: int = 60) -> str:
    # Kept to one line and printable whatever the arguments hold.
    command = " ".join(procfs.argv(pid)).encode("unicode_escape", errors="replace").decode()
    command = command or f"[{pid}]"
    return command if len(command) <= width else command[: width - 3] + "..."
