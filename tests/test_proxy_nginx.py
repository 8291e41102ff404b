"""Behind the documented nginx, spoofed forwarding headers change nothing (security review H2).

A real nginx runs the exact server block from docs/deployment.md (only the upstream address, the
listen ports and the certificate paths substituted) in front of the real server. Clients connect
from distinct loopback addresses (127.0.0.2, 127.0.0.3), which nginx sees as their addresses.
"""

import datetime
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pulse import db
from pulse.models import AuditLog, WebhookEvent
from tests.live_server import LiveServer

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_ALL = os.environ.get("PULSE_TEST_REQUIRE_ALL") == "1"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
HOST = "billing.example.com"
ATTACKER, BYSTANDER = "127.0.0.2", "127.0.0.3"

pytestmark = pytest.mark.slow


def documented_block():
    """The ```nginx block of docs/deployment.md, verbatim."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/deployment.md must hold exactly one nginx block"
    return blocks[0]


def substitute(block, app_port, http_port, https_port, cert, key):
    """Only addresses, ports and paths change; each substitution must apply, or the doc drifted."""
    steps = [
        (r"server 10\.0\.0\.11:8000;", f"server 127.0.0.1:{app_port};"),
        (r"\n\s*server 10\.0\.0\.12:8000;[^\n]*", ""),
        (r"listen 80;", f"listen 127.0.0.1:{http_port};"),
        (r"listen 443 ", f"listen 127.0.0.1:{https_port} "),
        (r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};"),
    ]
    for pattern, replacement in steps:
        block, count = re.subn(pattern, replacement, block)
        assert count == 1, f"docs/deployment.md's nginx block no longer matches {pattern!r}"
    return block


def self_signed(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Nginx:
    def __init__(self, directory, app_port):
        if NGINX is None:
            if REQUIRE_ALL:
                pytest.fail("nginx is required (PULSE_TEST_REQUIRE_ALL=1): apt-get install nginx")
            pytest.skip("needs nginx (apt-get install nginx)")
        self.dir = directory
        self.http_port, self.https_port = free_port(), free_port()
        cert, key = self_signed(directory)
        block = substitute(documented_block(), app_port, self.http_port, self.https_port, cert, key)
        temp = "\n".join(
            f"  {kind}_temp_path {directory}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must write the temp dirs below
        conf = (
            f"{user}daemon off;\nworker_processes 1;\npid {directory}/nginx.pid;\n"
            f"error_log {directory}/error.log;\nevents {{ worker_connections 64; }}\n"
            f"http {{\n  access_log {directory}/access.log;\n{temp}\n{block}\n}}\n"
        )
        self.conf = directory / "nginx.conf"
        self.conf.write_text(conf)
        self.proc = None

    def start(self):
        args = [NGINX, "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.dir / "error.log")]
        checked = subprocess.run(args + ["-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.https_port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start: " + (self.dir / "error.log").read_text())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def request(self, method, path, source, headers=None, body=None):
        """One HTTPS request from `source` (a loopback address) -> (status, headers, body)."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1",
            self.https_port,
            context=ssl._create_unverified_context(),
            source_address=(source, 0),
            timeout=15,
        )
        try:
            conn.request(method, path, body=body, headers={"Host": HOST, **(headers or {})})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()


def spoofed(i):
    """Every header a client might forge to pick its own address or scheme."""
    return {
        "X-Real-Ip": f"10.2.0.{i}",
        "X-Forwarded-For": f"10.1.0.{i}",
        "X-Scheme": "http",
        "X-Forwarded-Proto": "http",
        "Forwarded": f"for=10.3.0.{i};proto=http",
        "X-Forwarded-Host": "evil.test",
    }


def access_ips(server, marker, count):
    """The `ip` of the access-log lines whose path contains `marker`, once `count` are in (lines trail responses)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in list(server.logs) if line.startswith("{")]
        ips = [e["ip"] for e in lines if e.get("logger") == "pulse.access" and marker in e.get("path", "")]
        if len(ips) >= count or time.monotonic() > deadline:
            return ips
        time.sleep(0.05)


@pytest.fixture
def stack(db_url, tmp_path):
    server = LiveServer(
        db_url,
        env={"PULSE_TRUST_PROXY": "1", "PULSE_TRUSTED_PROXIES": "127.0.0.1", "PULSE_RATE_LIMIT_ANONYMOUS": "5/minute"},
    )
    nginx = None
    try:
        server.start()
        nginx = Nginx(tmp_path, server.port).start()
        yield server, nginx
    finally:
        if nginx is not None:
            nginx.stop()
        server.stop()
        db.database.close()


def test_spoofed_forwarding_headers_change_neither_bucket_nor_logged_address(stack, db_url):
    server, nginx = stack
    project = server.create_project("Proxied", stripe_webhook_secret="whsec_" + "p" * 32)
    bad_key = {"X-API-Key": "pp_live_" + "Z" * 40}
    codes = []
    for i in range(8):
        status, headers, _ = nginx.request(
            "GET", "/api/subscription?external_user_id=1&probe=limit", ATTACKER, {**bad_key, **spoofed(i)}
        )
        codes.append(status)
        assert headers["X-RateLimit-Limit"] == "5"
    # One bucket for the attacker whatever it forged, and no HTTPS redirect from a forged scheme.
    assert codes == [401] * 5 + [429] * 3
    status, headers, _ = nginx.request("GET", "/api/subscription?external_user_id=1&probe=limit", BYSTANDER, bad_key)
    assert status == 401 and headers["X-RateLimit-Remaining"] == "4"  # the address nginx saw is the key
    assert access_ips(server, "/api/subscription", 9) == [ATTACKER] * 8 + [BYSTANDER]

    # Sign-in lockout: a fresh forged address per guess gets no fresh budget (review H2: 20 guesses
    # with rotated X-Real-Ip were all checked). Audit rows carry the address nginx saw.
    def sign_in(source, i):
        status, headers, _ = nginx.request("GET", "/console/login", source, spoofed(i))
        assert status == 200
        xsrf = re.search(r"_xsrf=([^;]+)", headers["Set-Cookie"]).group(1)
        form = urllib.parse.urlencode({"email": project["admin_email"], "password": f"guess-{i}", "_xsrf": xsrf})
        return nginx.request(
            "POST",
            "/console/login",
            source,
            {**spoofed(100 + i), "Cookie": f"_xsrf={xsrf}", "Content-Type": "application/x-www-form-urlencoded"},
            form,
        )[0]

    guesses = [sign_in(ATTACKER, i) for i in range(7)]
    assert guesses[0] == 401 and 429 in guesses[:6], guesses
    assert guesses[guesses.index(429) :] == [429] * (7 - guesses.index(429)), guesses
    assert sign_in(BYSTANDER, 99) == 401  # another real address is not locked out

    # Invalid webhook signatures are recorded with that address too (and capped by it).
    for i in range(3):
        status, _, _ = nginx.request(
            "POST",
            f"/api/webhook/{project['project_id']}",
            ATTACKER,
            {**spoofed(i), "Stripe-Signature": "t=1,v1=00", "Content-Type": "application/json"},
            b'{"id": "evt_forged"}',
        )
        assert status == 400

    db.bind(db_url)
    with db.block():
        audit_ips = {row.ip for row in AuditLog.select().where(AuditLog.action == "console.sign_in_failed")}
        webhook_ips = {
            row.remote_ip for row in WebhookEvent.select().where(WebhookEvent.outcome == "invalid_signature")
        }
    assert audit_ips == {ATTACKER, BYSTANDER}
    assert webhook_ips == {ATTACKER}
    assert access_ips(server, "/console/login", 16) == [ATTACKER] * 14 + [BYSTANDER] * 2
    assert access_ips(server, "/api/webhook", 3) == [ATTACKER] * 3


def test_forwarding_headers_from_a_peer_that_is_not_a_listed_proxy_are_ignored(stack):
    server, _ = stack
    conn = http.client.HTTPConnection("127.0.0.1", server.port, source_address=(ATTACKER, 0), timeout=15)
    try:
        codes = []
        for i in range(7):
            conn.request("GET", "/api/health?probe=direct", headers={**spoofed(i), "X-Forwarded-Proto": "https"})
            response = conn.getresponse()
            response.read()
            codes.append(response.status)
    finally:
        conn.close()
    # 127.0.0.2 is not in PULSE_TRUSTED_PROXIES: its X-Forwarded-Proto is not believed (redirect to
    # https), and the redirect happens before any counting; its X-Forwarded-For is not its address.
    assert set(codes) == {301}
    assert access_ips(server, "/api/health", 7) == [ATTACKER] * 7
