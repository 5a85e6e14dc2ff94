"""Parsers in isolation: the --port grammar and SERVER_STARTER_PORT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server_starter.contract import PortVariableError, decode_ports, encode_ports
from server_starter.superdaemon.environment import load_envdir
from server_starter.superdaemon.sockets import PortSpec, SocketError, parse_path, parse_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8080", PortSpec("8080", None, 8080, False, None)),
        (" 8080 ", PortSpec("8080", None, 8080, False, None)),
        ("u53", PortSpec("53", None, 53, True, None)),
        ("8080=5", PortSpec("8080", None, 8080, False, 5)),
        ("127.0.0.1:8080", PortSpec("127.0.0.1:8080", "127.0.0.1", 8080, False, None)),
        ("localhost:u53=7", PortSpec("localhost:53", "localhost", 53, True, 7)),
        ("[::1]:8080", PortSpec("[::1]:8080", "::1", 8080, False, None)),
        ("[ ::1 ]:8080", PortSpec("[::1]:8080", "::1", 8080, False, None)),
        ("::1:8080", PortSpec("[::1]:8080", "::1", 8080, False, None)),  # as Perl reads it
    ],
)
def test_port_grammar(text: str, expected: PortSpec) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "http",
        "0",
        "65536",
        "99999999",
        ":8080",
        "[::1",
        "[]:80",
        "80=",
        "80=x",
        "80=1",
        "80=2",
        "80=999999999",
        "a;b:80",
        "host:",
        "8080/tcp",
    ],
)
def test_port_grammar_rejects(text: str) -> None:
    with pytest.raises(SocketError) as info:
        parse_port(text)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["http://localhost:8080", "https://[::1]:8443/", "tcp://0:80"])
def test_a_url_is_refused_as_a_url(text: str) -> None:
    with pytest.raises(SocketError, match="takes PORT or HOST:PORT, not a URL"):
        parse_port(text)


def test_path_rejects_too_long_and_separators() -> None:
    with pytest.raises(SocketError, match="longer than"):
        parse_path("/tmp/" + "x" * 200)
    with pytest.raises(SocketError, match="cannot appear"):
        parse_path("/tmp/a=b.sock")
    with pytest.raises(SocketError, match="empty"):
        parse_path("")


def test_decode_matches_perl_examples() -> None:
    value = "18081=4;127.0.0.1:18082=5;[::1]:18083=6;/tmp/s.sock=7"
    assert decode_ports(value) == {
        "18081": 4,
        "127.0.0.1:18082": 5,
        "[::1]:18083": 6,
        "/tmp/s.sock": 7,
    }
    assert list(decode_ports(value)) == ["18081", "127.0.0.1:18082", "[::1]:18083", "/tmp/s.sock"]
    assert decode_ports("") == {}


@pytest.mark.parametrize("bad", ["8080", "=3", "8080=x", "8080=3;", "8080=3;8080=4", ";"])
def test_decode_rejects(bad: str) -> None:
    with pytest.raises(PortVariableError):
        decode_ports(bad)


keys = st.text(
    alphabet=st.characters(blacklist_characters=";=", blacklist_categories=["Cs"]), min_size=1
)


@given(st.dictionaries(keys, st.integers(min_value=0, max_value=2**20), max_size=8))
def test_encode_decode_round_trip(ports: dict[str, int]) -> None:
    assert decode_ports(encode_ports(ports.items())) == ports


@given(st.text())
def test_decode_never_crashes_unexpectedly(text: str) -> None:
    try:
        decoded = decode_ports(text)
    except PortVariableError as err:
        assert str(err)
    else:
        assert encode_ports(decoded.items()) == text


@given(st.text(max_size=40))
def test_parse_port_accepts_or_explains(text: str) -> None:
    try:
        spec = parse_port(text)
    except SocketError as err:
        assert str(err) and "\n" not in str(err)
    else:
        assert 1 <= spec.port <= 65535
        assert ";" not in spec.key and "=" not in spec.key


@given(
    st.integers(min_value=1, max_value=65535),
    st.booleans(),
    st.sampled_from([None, "127.0.0.1", "::1", "example.org"]),
)
def test_parse_port_round_trip(port: int, udp: bool, host: str | None) -> None:
    text = ("u" if udp else "") + str(port)
    if host is not None:
        text = (f"[{host}]" if ":" in host else host) + ":" + text
    spec = parse_port(text)
    assert (spec.port, spec.udp, spec.host) == (port, udp, host)
    assert spec.key == text.replace("u", "", 1) if udp else spec.key == text


def test_envdir_reads_first_lines(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    directory = Path(str(tmp_path))
    (directory / "A").write_text("one\ntwo\n")
    (directory / "EMPTY").write_text("")
    (directory / ".hidden").write_text("x\n")
    assert load_envdir(str(directory)) == {"A": "one"}
    assert load_envdir(str(directory / "missing")) == {}
    assert load_envdir(None) == {}
