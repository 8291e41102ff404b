"""The console behind a trusted TLS-terminating proxy: Secure cookies, per-client lockout, https URLs."""

import pytest

from console.base import SESSION_COOKIE
from pulse import db
from pulse.models import AuditLog
from tests.console_support import Console, text


@pytest.fixture
def config_overrides():
    return {"trust_proxy": True}


def via_proxy(ip):
    return {"X-Forwarded-Proto": "https", "X-Forwarded-For": ip}


@pytest.mark.gen_test(timeout=60)
async def test_https_sign_in_gets_a_secure_cookie(http_client, base_url, project):
    console = Console(http_client, base_url)
    response = await console.post(
        "/console/login",
        {"email": project.admin.email, "password": "correct horse battery"},
        headers=via_proxy("203.0.113.7"),
    )
    assert response.code == 302
    cookie = next(c for c in console.raw_set_cookies if c.startswith(SESSION_COOKIE + "="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = text(await console.get(f"/console/p/{project.project.public_id}/settings", headers=via_proxy("203.0.113.7")))
    assert 'value="https://' in page and f"/api/webhook/{project.project.public_id}" in page
    with db.block():
        assert AuditLog.get(AuditLog.action == "console.signed_in").ip == "203.0.113.7"


@pytest.mark.gen_test(timeout=60)
async def test_lockout_is_per_client_address(http_client, base_url, project):
    attacker, owner = Console(http_client, base_url), Console(http_client, base_url)
    for _ in range(5):
        await attacker.post(
            "/console/login", {"email": project.admin.email, "password": "guess"}, headers=via_proxy("198.51.100.9")
        )
    response = await attacker.post(
        "/console/login",
        {"email": project.admin.email, "password": "correct horse battery"},
        headers=via_proxy("198.51.100.9"),
    )
    assert response.code == 429
    response = await owner.post(
        "/console/login",
        {"email": project.admin.email, "password": "correct horse battery"},
        headers=via_proxy("203.0.113.7"),
    )
    assert response.code == 302
