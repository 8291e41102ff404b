"""Hostile clients against the real server (`run.py serve`): slow, oversized and flooding requests.

Each test proves two things: the hostile connection is cut or answered (it cannot hold the server
forever), and meanwhile an ordinary client is served.
"""

import json
import socket
import threading
import time

import pytest

from tests.live_server import LiveServer

TIMEOUTS = {"idle_connection_timeout": 2, "body_timeout": 2}
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "pulse.db"
    live = LiveServer(f"sqlite:///{path}", limits=TIMEOUTS).start()
    live.api_key = live.create_project("Hostile", admin_password="correct horse battery")["api_key"]
    yield live
    live.stop()
    assert live.proc.returncode == 0, "\n".join(live.logs[-20:])


def connect(server, timeout=10):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock, limit=10 * MIB):
    """Everything the server sends until it closes the connection (socket timeout = failure)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def parse(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else None
    return status, head.decode("latin-1"), body


def test_slow_body_is_cut_and_others_are_served(server):
    slow = connect(server, timeout=15)
    slow.sendall(
        b'POST /api/checkout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"a":'
    )
    # While the body trickles in, an ordinary request is served.
    assert server.healthy()
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 12:
        try:
            slow.sendall(b" ")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        try:
            slow.settimeout(0.5)
            if slow.recv(65536) == b"":
                closed = True
                break
        except TimeoutError:
            pass
        except ConnectionResetError:
            closed = True
            break
    slow.close()
    assert closed, "a body trickled one byte every 0.5 s held its connection past body_timeout"
    assert server.healthy()


def test_slow_headers_are_cut(server):
    slow = connect(server, timeout=15)
    slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
    for _ in range(3):
        slow.sendall(b"X-Trickle: 1\r\n")
        time.sleep(0.3)
    assert server.healthy()
    # idle_connection_timeout also bounds the wait for a complete header block.
    assert read_all(slow) == b""
    slow.close()


def send_quietly(sock, data):
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def test_oversized_body_with_content_length_gets_413(server):
    sock = connect(server)
    sock.sendall(
        b"POST /api/checkout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-API-Key: %s\r\nContent-Length: %d\r\n\r\n" % (server.api_key.encode(), MIB + 1)
    )
    send_quietly(sock, b"x" * (MIB + 1))
    status, head, body = parse(read_all(sock))
    sock.close()
    assert status == 413, head
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert server.healthy()


def test_oversized_chunked_body_gets_413(server):
    sock = connect(server)
    sock.sendall(
        b"POST /api/checkout HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-API-Key: %s\r\nTransfer-Encoding: chunked\r\n\r\n" % server.api_key.encode()
    )
    chunk = b"x" * 65536
    for _ in range(4 * MIB // len(chunk)):
        send_quietly(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk))
    send_quietly(sock, b"0\r\n\r\n")
    status, head, body = parse(read_all(sock))
    sock.close()
    assert status == 413, head
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert server.healthy()


def test_endless_chunked_body_is_cut(server):
    """A body that never ends (well past the 64 MiB drain cap would take too long): body_timeout ends it."""
    sock = connect(server, timeout=15)
    sock.sendall(
        b"POST /api/checkout HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % server.api_key.encode()
    )
    chunk = b"y" * 1024
    closed = False
    for _ in range(2000):
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.01)
    sock.close()
    assert closed, "a chunked body that never ends held its connection past body_timeout"
    assert server.healthy()


def test_big_body_to_a_non_api_route_is_refused_unread(server):
    """Non-streaming handlers buffer their body in RAM: the server-wide cap must refuse it before reading."""
    sock = connect(server, timeout=10)
    sock.sendall(b"POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (50 * MIB))
    # We send no body at all: a server willing to buffer 50 MiB would wait for it (until body_timeout).
    sock.settimeout(1.5)
    try:
        answer = sock.recv(65536)
    except TimeoutError:
        answer = None
    except ConnectionResetError:
        answer = b""
    sock.close()
    assert answer is not None, "the server waited for a 50 MiB body on a route that buffers bodies in memory"
    assert server.healthy()


def test_huge_header_is_refused(server):
    sock = connect(server)
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (200 * 1024) + b"\r\n\r\n")
    raw = b""
    try:
        raw = read_all(sock)
    except OSError:
        pass
    sock.close()
    status = parse(raw)[0] if raw else None
    assert status in (None, 431, 400), raw[:200]
    assert server.healthy()


def test_header_flood_is_refused(server):
    sock = connect(server)
    lines = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"b" * 20) for i in range(5000))
    try:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw = b""
    try:
        raw = read_all(sock)
    except OSError:
        pass
    sock.close()
    status = parse(raw)[0] if raw else None
    assert status in (None, 431, 400), raw[:200]
    assert server.healthy()


def test_many_idle_connections_do_not_starve_others(server):
    idle = [connect(server) for _ in range(200)]
    try:
        # Half of them send a partial request line, the rest nothing at all.
        for sock in idle[::2]:
            sock.sendall(b"GET /api/health HTTP/1.1\r\n")
        results = []

        def client():
            results.append(server.healthy())

        threads = [threading.Thread(target=client) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        assert results == [True] * 5
    finally:
        for sock in idle:
            sock.close()
    # The idle ones are reaped by idle_connection_timeout: a fresh one sees its connection closed.
    lingering = connect(server)
    assert read_all(lingering) == b""
    lingering.close()
    assert server.healthy()


def test_abandoned_bodies_do_not_hold_up_a_graceful_shutdown(tmp_path):
    """Clients that hang up mid-body never finish a request: shutdown must not wait for them."""
    live = LiveServer(f"sqlite:///{tmp_path / 'pulse.db'}", limits=TIMEOUTS).start()
    try:
        for path in (b"/console/login", b"/api/checkout"):
            sock = connect(live)
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{" % path)
            sock.close()  # gone mid-body
        sock = connect(live)
        sock.sendall(b"POST /console/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert read_all(sock) == b""  # cut by body_timeout
        sock.close()
        assert live.healthy()
    finally:
        live.stop()
    assert live.proc.returncode == 0
    assert not [line for line in live.logs if "drain timed out" in line], live.logs[-5:]


@pytest.mark.parametrize("length", [b"\xb2", b"\xb9", b"1\xb3", b"\xb2" * 30], ids=["2", "1", "13", "2x30"])
def test_a_content_length_in_unicode_digits_is_400_not_500(server, length):
    """QA #2: "²" (latin-1 0xB2) passes str.isdigit() but not int(); the API must not 500 on it."""
    sock = connect(server)
    sock.sendall(
        b"POST /api/portal HTTP/1.1\r\nHost: x\r\nX-API-Key: "
        + server.api_key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: "
        + length
        + b"\r\n\r\n{}"
    )
    raw = read_all(sock)
    sock.close()
    status, head, body = parse(raw)
    assert status == 400, raw[:300]
    assert b"internal_error" not in body
    assert server.healthy()
