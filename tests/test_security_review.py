"""Findings of the security review (docs/security.md) that are cheapest to pin down as tests."""

import os
import subprocess
import sys

import pytest

from pulse import security
from tests.console_support import PASSWORD, Console
from tests.live_server import ROOT


@pytest.mark.gen_test(timeout=60)
async def test_sign_in_runs_bcrypt_once_whether_or_not_the_account_exists(http_client, base_url, project, monkeypatch):
    """Same work for a known and an unknown email: response time does not reveal accounts."""
    calls = []
    real = security.check_password

    def counting(password, hashed):
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(security, "check_password", counting)
    console = Console(http_client, base_url)
    for email in ("nobody-here@example.test", project.admin.email):
        calls.clear()
        response = await console.login(email, "wrong password " + email)
        assert response.code == 401, response.code
        assert len(calls) == 1 and calls[0].startswith("$2b$04$"), (email, calls)
    calls.clear()
    assert (await console.login(project.admin.email, PASSWORD)).code in (302, 303)
    assert len(calls) == 1


def test_api_keys_and_session_tokens_are_stored_as_hashes():
    raw, prefix, digest = security.new_api_key()
    assert raw not in digest and raw[len(prefix) :] not in digest and len(digest) == 64
    token, token_hash = security.new_session_token()
    assert token not in token_hash and len(token_hash) == 64


def test_cli_refuses_a_password_bcrypt_would_not_take(tmp_path):
    env = dict(
        os.environ,
        PULSE_DATABASE_URL=f"sqlite:///{tmp_path / 'pulse.db'}",
        PULSE_SECRET_KEY="review-secret-key-0123456789",
    )
    done = subprocess.run(
        [sys.executable, "run.py", "create-project", "X", "--admin-email", "a@b.test", "--admin-password", "p" * 73],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "run.py: error: --admin-password must be at most 72 bytes"


@pytest.mark.gen_test(timeout=60)
async def test_every_console_post_route_refuses_a_form_without_the_xsrf_token(app, http_client, base_url, make_project):
    """CSRF: a signed-in admin's browser posting from another site (no token) changes nothing."""
    from pulse import db
    from pulse.models import ApiKey
    from tests.console_support import seed
    from tests.test_isolation import fill

    owner = make_project(name="Owned", admin_email="owner@example.test")
    customers, failed = seed(owner.project, count=1)
    with db.block():
        key_id = ApiKey.get(ApiKey.project == owner.project).public_id
    console = Console(http_client, base_url)
    assert (await console.login(owner.admin.email, PASSWORD)).code in (302, 303)
    tried = 0
    for rule in app.wildcard_router.rules:
        handler = rule.target
        if not isinstance(handler, type) or "post" not in {n for c in handler.__mro__[:-2] for n in vars(c)}:
            continue
        pattern = rule.matcher.regex.pattern.rstrip("$")
        if not pattern.startswith("/console"):
            continue
        path = fill(pattern, owner.project.public_id, key_id, failed.id, customers[0].external_user_id)
        response = await console.post(
            path,
            {
                "grace": "0",
                "label": "csrf",
                "stripe_secret_key": "sk_test_csrf",
                "past_due_has_access": "no",
                "current_password": PASSWORD,
                "new_password": "x" * 12,
                "confirm_password": "x" * 12,
            },
            xsrf=False,
        )
        assert response.code == 403, f"POST {path} without an XSRF token -> {response.code}"
        tried += 1
    assert tried >= 8
    with db.block():
        assert ApiKey.select().where(ApiKey.project == owner.project).count() == 1
        assert ApiKey.get(ApiKey.project == owner.project).revoked_at is None
    assert (await console.get(f"/console/p/{owner.project.public_id}/")).code == 200  # still signed in
