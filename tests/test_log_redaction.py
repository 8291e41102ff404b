"""A key misplaced anywhere a client might put it never reaches the logs (security review L1/L7).

The real server runs at `debug`; a valid API key (and a Stripe-shaped key, and a webhook secret)
goes into the path, the query, every header, malformed header lines, the request line, cookies,
console forms and static paths. Then all of the server's output is grepped.
"""

import json
import socket
import time
import urllib.parse

import pytest

from tests.live_server import LiveServer

pytestmark = pytest.mark.slow


def raw_request(port, data, timeout=5):
    """Send bytes as they are (malformed requests included) and read whatever comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def misplacements(key):
    """(method, path, headers, body) for each place a client might put `key` by mistake."""
    quoted = urllib.parse.quote(key, safe="")
    encoded_underscores = key.replace("_", "%5F")
    form = urllib.parse.urlencode({"email": key, "password": key, "next": "/" + key, "_xsrf": "x"})
    return [
        ("GET", f"/api/keys/{key}", {}, None),
        ("GET", f"/api/{encoded_underscores}", {}, None),
        ("GET", f"/api/subscription?api_key={quoted}&external_user_id={quoted}", {}, None),
        ("GET", "/api/health", {"X-Request-Id": key}, None),
        ("GET", "/api/subscription?external_user_id=1", {"Authorization": f"Bearer {key}"}, None),
        ("GET", "/api/subscription?external_user_id=1", {"X-API-Key": "x" + key}, None),
        ("GET", "/api/subscription?external_user_id=1", {"X-API-Key": key + "x"}, None),
        (
            "GET",
            "/api/health",
            {"Cookie": f"session={key}", "Referer": f"https://a.test/?k={key}", "User-Agent": key},
            None,
        ),
        (
            "POST",
            "/api/checkout",
            {"X-API-Key": key, "Idempotency-Key": key, "Content-Type": "application/json"},
            json.dumps({"external_user_id": key, "email": key}),
        ),
        ("POST", f"/api/webhook/{key[:40]}", {"Stripe-Signature": f"t=1,v1={key}"}, "{}"),
        ("GET", f"/console/login?next=/{quoted}", {}, None),
        ("POST", "/console/login", {"Content-Type": "application/x-www-form-urlencoded", "Cookie": "_xsrf=x"}, form),
        ("GET", f"/console/p/{key}/customers/{quoted}", {}, None),
        ("GET", f"/static/console.css%00.js?x={quoted}", {}, None),
        ("GET", f"/static/{quoted}", {}, None),
    ]


def malformed(key):
    """Requests Tornado itself rejects and logs: bare CR in a header, two Host headers, a bad request line."""
    return [
        f"GET /api/health HTTP/1.1\r\nHost: a\r\nX-API-Key: x{key}\rZ: 1\r\n\r\n".encode(),
        f"GET /api/health HTTP/1.1\r\nHost: a\r\nHost: x{key}\r\n\r\n".encode(),
        f"GET /api/health?k={key} HTTP/1.1{key}\r\nHost: a\r\n\r\n".encode(),
        f"GET /api/{key} HTTP/1.1\r\nHost: a\r\nContent-Length: {key}\r\n\r\n".encode(),
        f"GET /api/health HTTP/1.1\r\nHost: a\r\n {key}\r\n\r\n".encode(),
        f"GET /api/health HTTP/1.1\r\nHost: a\r\nX-Request-Id: {key}\x00\r\n\r\n".encode(),
    ]


def test_no_key_in_any_log_line_wherever_the_client_put_it(db_url, tmp_path):
    server = LiveServer(
        db_url,
        env={
            "PULSE_LOG_LEVEL": "debug",
            "PULSE_RATE_LIMIT_ANONYMOUS": "100000/minute",
            "PULSE_RATE_LIMIT_AUTHENTICATED": "100000/minute",
        },
    )
    with server:
        project = server.create_project("Leaky")
        secrets = [project["api_key"], "sk_live_" + "S" * 40, "whsec_" + "W" * 32]
        for secret in secrets:
            for method, path, headers, body in misplacements(secret):
                status, _, _ = server.request(method, path, body=body, headers=headers)
                assert status < 500, (path, status)
            for data in malformed(secret):
                raw_request(server.port, data)
        time.sleep(0.5)  # the last log lines trail the responses
    output = "\n".join(server.logs)
    assert '"logger": "pulse.access"' in output and "tornado" in output  # both kinds of line were written
    for secret in secrets:
        random_part = secret.split("_")[-1]
        assert random_part not in output, [line for line in server.logs if random_part in line][:3]
        assert random_part[-20:] not in output, [line for line in server.logs if random_part[-20:] in line][:3]
