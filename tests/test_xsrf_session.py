"""The console's XSRF token (security review L11): Secure over HTTPS, bound to the session, rotated at sign-in."""

import datetime
import ssl
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
import tornado.httpclient
import tornado.httpserver
import tornado.netutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pulse import db
from pulse.models import ApiKey
from tests.console_support import PASSWORD, Console, text


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


def set_cookies(response):
    """{name: raw Set-Cookie header} of a response."""
    found = {}
    for header in response.headers.get_list("Set-Cookie"):
        jar = SimpleCookie()
        jar.load(header)
        found.update({name: header for name in jar})
    return found


@pytest.mark.gen_test(timeout=60)
async def test_xsrf_cookie_is_secure_over_https_and_replaced_at_sign_in(app, project, tmp_path):
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app, ssl_options=self_signed(tmp_path))
    server.add_sockets(sockets)
    base = f"https://127.0.0.1:{sockets[0].getsockname()[1]}"
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    try:
        form = await client.fetch(base + "/console/login", validate_cert=False)
        before = set_cookies(form)["_xsrf"]
        assert "Secure" in before and "HttpOnly" in before and "SameSite=Lax" in before
        token = SimpleCookie(before)["_xsrf"].value
        signed_in = await client.fetch(
            base + "/console/login",
            method="POST",
            validate_cert=False,
            follow_redirects=False,
            raise_error=False,
            headers={"Cookie": f"_xsrf={token}", "Content-Type": "application/x-www-form-urlencoded"},
            body=urlencode({"email": project.admin.email, "password": PASSWORD, "_xsrf": token}),
        )
        assert signed_in.code == 302
        after = set_cookies(signed_in)
        assert "Secure" in after["_xsrf"] and "Secure" in after["pulse_session"]
        assert SimpleCookie(after["_xsrf"])["_xsrf"].value != token
    finally:
        client.close()
        server.stop()


@pytest.mark.gen_test(timeout=60)
async def test_plain_http_on_loopback_gets_no_secure_flag(http_client, base_url):
    response = await http_client.fetch(base_url + "/console/login")  # a browser without cookies
    assert "Secure" not in set_cookies(response)["_xsrf"]


@pytest.fixture
def console(http_client, base_url):
    return Console(http_client, base_url)


@pytest.mark.gen_test(timeout=60)
async def test_a_planted_xsrf_cookie_does_not_authorise_a_forged_form(console, project):
    """L11: a cookie planted over plain HTTP or from a sibling domain, then a cross-site form carrying it."""
    assert (await console.login(project.admin.email)).code == 302
    planted = "0123456789abcdef0123456789abcdef"  # the attacker's own double-submit token
    console.cookies["_xsrf"] = planted
    forged = await console.post(f"/console/p/{project.project.public_id}/keys", {"label": "forged"})
    assert forged.code == 403
    with db.block():
        assert ApiKey.select().where(ApiKey.project == project.project).count() == 1


@pytest.mark.gen_test(timeout=60)
async def test_the_token_is_rotated_at_sign_in_and_tied_to_the_session(console, http_client, base_url, project):
    keys = f"/console/p/{project.project.public_id}/keys"
    anonymous = console.cookies["_xsrf"]
    assert (await console.login(project.admin.email)).code == 302
    first = console.cookies["_xsrf"]
    assert first != anonymous
    # The page's forms carry the session's token, whatever the mask.
    page = text(await console.get(keys))
    assert 'name="_xsrf"' in page
    assert (await console.post(keys, {"label": "ok"})).code in (200, 201, 303)
    # The token from before sign-in no longer works.
    console.cookies["_xsrf"] = anonymous
    assert (await console.post(keys, {"label": "stale"})).code == 403
    # Another session of the same user has another token; neither works in the other.
    other = Console(http_client, base_url)
    assert (await other.login(project.admin.email)).code == 302
    assert other.cookies["_xsrf"] != first
    other.cookies["_xsrf"] = first
    assert (await other.post(keys, {"label": "crossed"})).code == 403
    with db.block():
        labels = {k.label for k in ApiKey.select().where(ApiKey.project == project.project)}
    assert "ok" in labels and not labels & {"stale", "crossed"}
