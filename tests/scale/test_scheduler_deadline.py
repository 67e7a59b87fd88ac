"""Bounded waits on a Dask scheduler address: an overall deadline, and a clear error for a non-Dask answer.

Two local servers on 127.0.0.1 stand in for bad addresses: one accepts connections and never answers (Dask's
handshake read has no timeout of its own, so ``Client(address, timeout=...)`` waited forever), one answers HTTP
(Dask read ``HTTP/1.1`` as a frame length and failed with "Unable to allocate 3.07 EiB"). Both servers stop by
themselves (a stop event set by the test, or at the latest after `SERVER_LIFETIME` seconds). The deadline is set
to 2 s here; the elapsed-time check is a hang check (bounded by the deadline plus the client's close), not a
speed measurement.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Callable, Iterator

import pytest

from causalgeom._util import dask as cg_dask
from causalgeom.cli import main
from causalgeom.errors import CausalGeomError, ConfigError

SERVER_LIFETIME = 55.0  # seconds: the servers close themselves even if a test never sets their stop event
DEADLINE_S = 2


@contextlib.contextmanager
def loopback_server(on_accept: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A TCP server on 127.0.0.1 (a free port) calling ``on_accept(conn, stop)`` in a thread per connection."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    stop = threading.Event()
    end = time.monotonic() + SERVER_LIFETIME
    conns: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def serve() -> None:
        while not stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = srv.accept()
            except (socket.timeout, OSError):
                continue
            conns.append(conn)
            t = threading.Thread(target=on_accept, args=(conn, stop), daemon=True)
            t.start()
            threads.append(t)
        srv.close()

    main_thread = threading.Thread(target=serve, daemon=True)
    main_thread.start()
    try:
        yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        main_thread.join(5)
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()
        for t in threads:
            t.join(5)


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Accept and never answer (until the test ends)."""
    stop.wait(SERVER_LIFETIME)


def http_400(conn: socket.socket, stop: threading.Event) -> None:
    """Answer whatever arrives as an HTTP server does with a request it cannot parse, then close."""
    conn.settimeout(SERVER_LIFETIME)
    with contextlib.suppress(OSError):
        if conn.recv(4096):
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        conn.close()


@pytest.fixture
def short_deadline(monkeypatch):
    monkeypatch.setattr(cg_dask, "CONNECT_DEADLINE", f"{DEADLINE_S}s")


@pytest.mark.slow
def test_server_that_accepts_and_never_answers_fails_after_the_deadline(short_deadline):
    with loopback_server(silent) as address:
        start = time.monotonic()
        with pytest.raises(CausalGeomError, match=f"did not complete the Dask handshake within {DEADLINE_S} s") as err:
            with cg_dask.client(address):
                pass
        elapsed = time.monotonic() - start
    assert address in str(err.value)
    assert DEADLINE_S * 0.9 <= elapsed < 30  # waited for the deadline, and no longer than it plus the close
    assert cg_dask.current_client() is None  # the abandoned client is closed, not left as the default


def test_http_answer_is_a_config_error_naming_the_address(short_deadline):
    with loopback_server(http_400) as address:
        with pytest.raises(ConfigError) as err:
            with cg_dask.client(address):
                pass
    msg = str(err.value)
    assert address in msg and "--scheduler" in msg and "not in the Dask protocol" in msg
    assert "EiB" not in msg and "allocate" not in msg
    assert cg_dask.current_client() is None


@pytest.mark.slow
def test_refused_connection_still_reports_unreachable(monkeypatch):
    monkeypatch.setattr(cg_dask, "CONNECT_TIMEOUT", "1s")
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CausalGeomError, match="cannot reach the Dask scheduler"):
        with cg_dask.client(f"tcp://127.0.0.1:{port}"):
            pass


@pytest.mark.slow
def test_cli_exits_2_for_both_bad_servers(short_deadline, tmp_path, capsys):
    import causalgeom as cg

    study = cg.testing.make_study(tmp_path / "study", n_runs=2, n=40, d=4, k=3)
    for handler, expected in ((http_400, "not in the Dask protocol"), (silent, "did not complete the Dask handshake")):
        with loopback_server(handler) as address:
            assert main(["metrics", str(study.path), "--scheduler", address]) == 2
        err = capsys.readouterr().err
        assert expected in err and address in err and "EiB" not in err
        assert len(err.strip().splitlines()) == 1, err
