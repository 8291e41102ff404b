"""HTTPS (SPEC 3.1): plain HTTP is redirected, loopback counts as secure, HSTS over HTTPS."""

import pytest
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from pulse.config import load_config
from web import HSTS, client_ip, is_secure, redirect_target

PROXY_HTTP = {"X-Forwarded-Proto": "http", "X-Forwarded-For": "203.0.113.7"}
PROXY_HTTPS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}


def request(remote_ip="203.0.113.9", protocol="http", headers=None, uri="/api/health?x=1"):
    all_headers = HTTPHeaders({"Host": "pay.example.com", **(headers or {})})
    req = HTTPServerRequest(start_line=RequestStartLine("GET", uri, "HTTP/1.1"), headers=all_headers)
    req.remote_ip, req.protocol = remote_ip, protocol
    return req


def cfg(**overrides):
    return load_config(environ={}, secret_key="x" * 32, **overrides)


def test_remote_plain_http_is_redirected_to_the_same_url():
    assert redirect_target(request(), cfg()) == "https://pay.example.com/api/health?x=1"
    assert redirect_target(request(protocol="https"), cfg()) is None
    assert redirect_target(request(), cfg(force_https=False)) is None


def test_loopback_counts_as_secure_only_without_forwarding_headers():
    assert is_secure(request(remote_ip="127.0.0.1"), cfg())
    assert is_secure(request(remote_ip="::1"), cfg())
    assert not is_secure(request(remote_ip="127.0.0.1", headers=PROXY_HTTPS), cfg())  # proxy not trusted


PROXIES = "10.0.0.0/24,127.0.0.1"


def behind_proxy(**overrides):
    """trust_proxy on, with the proxies in 10.0.0.0/24 (and loopback) listed as trusted."""
    return load_config(environ={"PULSE_TRUSTED_PROXIES": PROXIES}, secret_key="x" * 32, trust_proxy=True, **overrides)


def test_forwarded_proto_is_believed_only_from_a_trusted_proxy():
    trusted = behind_proxy()
    assert is_secure(request(remote_ip="10.0.0.2", headers=PROXY_HTTPS), trusted)
    assert not is_secure(request(remote_ip="127.0.0.1", headers=PROXY_HTTP), trusted)
    assert not is_secure(request(headers=PROXY_HTTPS), cfg())
    # Several proxies: the right-most value is the one our own proxy set.
    assert not is_secure(request(remote_ip="10.0.0.2", headers={"X-Forwarded-Proto": "https, http"}), trusted)
    # A peer that is not a listed proxy cannot claim https, even with PULSE_TRUST_PROXY=1.
    assert not is_secure(request(remote_ip="203.0.113.50", headers=PROXY_HTTPS), trusted)
    # X-Scheme is never read (nginx passes a client's copy through: security review H2).
    assert not is_secure(
        request(remote_ip="10.0.0.2", headers={"X-Scheme": "https", "X-Forwarded-Proto": "http"}), trusted
    )


def test_client_ip_honours_forwarded_for_only_when_trusted():
    req = request(remote_ip="10.0.0.2", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    assert client_ip(req, behind_proxy()) == "203.0.113.7"
    assert client_ip(req, cfg()) == "10.0.0.2"
    # PULSE_TRUST_PROXY=1 but the peer is not a listed proxy (default: loopback only).
    assert client_ip(req, cfg(trust_proxy=True)) == "10.0.0.2"


def test_client_ip_is_the_right_most_address_that_is_not_a_trusted_proxy():
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.0.0.5"}  # client's lie, client, inner proxy
    assert client_ip(request(remote_ip="10.0.0.2", headers=chain), behind_proxy()) == "203.0.113.7"
    all_proxies = {"X-Forwarded-For": "10.0.0.7, 10.0.0.5"}
    assert client_ip(request(remote_ip="10.0.0.2", headers=all_proxies), behind_proxy()) == "10.0.0.7"
    split = HTTPHeaders()  # two X-Forwarded-For headers count as one list
    split.add("X-Forwarded-For", "198.51.100.1")
    split.add("X-Forwarded-For", "203.0.113.7")
    req = request(remote_ip="10.0.0.2")
    req.headers = split
    assert client_ip(req, behind_proxy()) == "203.0.113.7"
    v6 = request(remote_ip="::1", headers={"X-Forwarded-For": "2001:db8::7"})
    assert client_ip(v6, cfg(trust_proxy=True)) == "2001:db8::7"
    mapped = request(remote_ip="::ffff:127.0.0.1", headers={"X-Forwarded-For": "203.0.113.7"})
    assert client_ip(mapped, cfg(trust_proxy=True)) == "203.0.113.7"


@pytest.fixture
def config_overrides():
    return {"trust_proxy": True}


@pytest.mark.gen_test
async def test_http_requests_redirect_301_for_get_and_308_otherwise(api):
    got = await api("GET", "/api/health?verbose=1", key="", headers=PROXY_HTTP)
    assert got.code == 301
    assert got.headers["Location"].startswith("https://") and got.headers["Location"].endswith("/api/health?verbose=1")
    assert (await api("HEAD", "/api/health", key="", headers=PROXY_HTTP)).code == 301
    posted = await api("POST", "/api/checkout", json_body={"a": 1}, headers=PROXY_HTTP)
    assert posted.code == 308 and posted.headers["Location"].endswith("/api/checkout")
    page = await api("GET", "/status", key="", headers=PROXY_HTTP)  # console pages too
    assert page.code == 301 and page.headers["Location"].endswith("/status")
    assert "Strict-Transport-Security" not in got.headers


@pytest.mark.gen_test
async def test_https_responses_carry_hsts(api):
    response = await api("GET", "/api/health", key="", headers=PROXY_HTTPS)
    assert response.code == 200
    assert response.headers["Strict-Transport-Security"] == HSTS
    missing = await api("GET", "/api/nope", headers=PROXY_HTTPS)
    assert missing.code == 404 and missing.headers["Strict-Transport-Security"] == HSTS


@pytest.mark.gen_test
async def test_loopback_without_proxy_headers_is_served_without_hsts(api):
    response = await api("GET", "/api/health", key="")
    assert response.code == 200
    assert "Strict-Transport-Security" not in response.headers


def test_client_ip_ignores_garbage_and_never_reads_x_real_ip():
    req = request(remote_ip="10.0.0.2", headers={"X-Forwarded-For": "not-an-ip"})
    assert client_ip(req, behind_proxy()) == "10.0.0.2"
    req = request(remote_ip="10.0.0.2", headers={"X-Forwarded-For": "203.0.113.7, not-an-ip"})
    assert client_ip(req, behind_proxy()) == "10.0.0.2"
    spoofed = {"X-Forwarded-For": "203.0.113.7", "X-Real-Ip": "198.51.100.9", "Forwarded": "for=198.51.100.8"}
    assert client_ip(request(remote_ip="10.0.0.2", headers=spoofed), behind_proxy()) == "203.0.113.7"
