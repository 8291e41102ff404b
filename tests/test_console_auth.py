"""Console sign-in: sessions, lockout, XSRF, safe redirects, sign-out and password change."""

from datetime import timedelta

import pytest

from console.base import SESSION_COOKIE, safe_next
from pulse import db, security, sessions
from pulse.models import AuditLog, LoginFailure, Session
from tests.console_support import PASSWORD, Console, text


@pytest.fixture
def console(http_client, base_url):
    return Console(http_client, base_url)


@pytest.mark.parametrize("rounds", [4, 12])
def test_dummy_hash_is_a_real_bcrypt_hash_at_the_configured_cost(rounds):
    # An invalid or cheaper dummy hash would answer faster and reveal which emails exist.
    saved = security.BCRYPT_ROUNDS
    try:
        security.configure_bcrypt(rounds)
        assert security.dummy_password_hash().startswith(f"$2b${rounds:02d}$")
        assert security.hash_password("x").startswith(f"$2b${rounds:02d}$")
        import bcrypt

        assert bcrypt.checkpw(b"nope", security.dummy_password_hash().encode()) is False
    finally:
        security.configure_bcrypt(saved)


def test_bcrypt_rounds_setting_defaults_to_12_and_refuses_below_4():
    from pulse.config import ConfigError, load_config

    assert load_config(environ={}, secret_key="k" * 20).bcrypt_rounds == 12
    assert load_config(environ={"PULSE_BCRYPT_ROUNDS": "5"}, secret_key="k" * 20).bcrypt_rounds == 5
    with pytest.raises(ConfigError, match="PULSE_BCRYPT_ROUNDS must be between 4 and 16"):
        load_config(environ={"PULSE_BCRYPT_ROUNDS": "3"}, secret_key="k" * 20)


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/console/p/proj_1/keys?x=1", "/console/p/proj_1/keys?x=1"),
        ("//evil.example/", "/console/"),
        ("/\\evil.example", "/console/"),
        ("https://evil.example", "/console/"),
        ("javascript:alert(1)", "/console/"),
        ("", "/console/"),
        ("/ok\r\nSet-Cookie: x=1", "/console/"),
        ("evil.example", "/console/"),
    ],
)
def test_safe_next(target, expected):
    assert safe_next(target) == expected


@pytest.mark.gen_test(timeout=60)
async def test_sign_in_sets_a_hardened_session_cookie_and_redirects_to_next(console, project):
    response = await console.login(project.admin.email, next_path=f"/console/p/{project.project.public_id}/keys")
    assert response.code == 302
    assert response.headers["Location"] == f"/console/p/{project.project.public_id}/keys"
    cookie = next(c for c in console.raw_set_cookies if c.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; HTTPS requests get Secure
    raw = console.cookies[SESSION_COOKIE]
    with db.block():
        stored = Session.get()
        assert stored.token_hash == security.hash_token(raw) and raw not in stored.token_hash
        assert stored.expires_at - stored.created_at == sessions.ABSOLUTE_LIFETIME
        assert AuditLog.select().where(AuditLog.action == "console.signed_in").count() == 1
    assert (await console.get("/console/account")).code == 200


@pytest.mark.gen_test(timeout=60)
async def test_open_redirect_is_refused(console, project):
    response = await console.login(project.admin.email, next_path="//evil.example/phish")
    assert response.code == 302 and response.headers["Location"] == "/console/"


@pytest.mark.gen_test(timeout=60)
async def test_failure_message_is_generic(console, project):
    wrong = await console.login(project.admin.email, password="not the password")
    unknown = await console.login("nobody@example.com", password="not the password")
    assert wrong.code == unknown.code == 401
    assert "Incorrect email or password." in text(wrong) and "Incorrect email or password." in text(unknown)
    assert SESSION_COOKIE not in console.cookies


@pytest.mark.gen_test(timeout=60)
async def test_five_failures_lock_the_email_and_ip_for_15_minutes(console, project):
    email = project.admin.email
    for _ in range(4):
        assert (await console.login(email, password="wrong password")).code == 401
    fifth = await console.login(email, password="wrong password")
    assert fifth.code == 429 and "Too many failed sign-ins" in text(fifth)
    locked = await console.login(email)  # even the right password is refused while locked
    assert locked.code == 429 and SESSION_COOKIE not in console.cookies
    assert (await console.login("other@example.com", password="x")).code == 401  # another email is not locked
    with db.block():
        # 16 minutes later the lock has expired.
        for row in LoginFailure.select():
            LoginFailure.update(created_at=row.created_at - timedelta(minutes=16)).where(
                LoginFailure.id == row.id
            ).execute()
    assert (await console.login(email)).code == 302


@pytest.mark.gen_test(timeout=60)
async def test_lockout_page_is_429_from_a_template(console, project):
    for _ in range(5):
        await console.login("ghost@example.com", password="wrong password")
    response = await console.login("ghost@example.com", password="wrong password")
    assert response.code == 429 and "<html" in text(response) and "Traceback" not in text(response)


@pytest.mark.gen_test(timeout=60)
async def test_forms_without_the_xsrf_token_are_refused(console, project):
    response = await console.post("/console/login", {"email": project.admin.email, "password": PASSWORD}, xsrf=False)
    assert response.code == 403 and SESSION_COOKIE not in console.cookies
    assert (await console.login(project.admin.email)).code == 302
    response = await console.post("/console/logout", xsrf=False)
    assert response.code == 403
    assert (await console.get("/console/account")).code == 200  # still signed in


@pytest.mark.gen_test(timeout=60)
async def test_sign_out_ends_the_session_server_side(console, project):
    await console.login(project.admin.email)
    raw = console.cookies[SESSION_COOKIE]
    response = await console.post("/console/logout")
    assert response.code == 302 and response.headers["Location"].startswith("/console/login")
    with db.block():
        assert Session.select().count() == 0
    console.cookies[SESSION_COOKIE] = raw  # replaying the old cookie does not work
    response = await console.get("/console/account")
    assert response.code == 302 and response.headers["Location"].startswith("/console/login?next=")


@pytest.mark.gen_test(timeout=60)
async def test_password_change_ends_every_session(console, http_client, base_url, project):
    other = Console(http_client, base_url)
    await other.login(project.admin.email)
    await console.login(project.admin.email)
    response = await console.post(
        "/console/account", {"current_password": "wrong one", "new_password": "x" * 12, "confirm_password": "x" * 12}
    )
    assert response.code == 400 and "not correct" in text(response)
    response = await console.post(
        "/console/account", {"current_password": PASSWORD, "new_password": "short", "confirm_password": "short"}
    )
    assert response.code == 400
    response = await console.post(
        "/console/account",
        {
            "current_password": PASSWORD,
            "new_password": "a new long password",
            "confirm_password": "a new long password",
        },
    )
    assert response.code == 302
    assert (await other.get("/console/account")).code == 302
    assert (await console.get("/console/account")).code == 302
    assert (await console.login(project.admin.email)).code == 401
    assert (await console.login(project.admin.email, password="a new long password")).code == 302


@pytest.mark.gen_test(timeout=60)
async def test_expired_and_idle_sessions_end(console, project):
    await console.login(project.admin.email)
    with db.block():
        row = Session.get()
        Session.update(last_seen_at=row.last_seen_at - sessions.IDLE_TIMEOUT).execute()
    assert (await console.get("/console/account")).code == 302
    await console.login(project.admin.email)
    with db.block():
        row = Session.get()
        Session.update(expires_at=row.created_at).execute()
    assert (await console.get("/console/account")).code == 302


@pytest.mark.gen_test(timeout=60)
async def test_signed_in_user_visiting_login_is_sent_on(console, project):
    await console.login(project.admin.email)
    response = await console.get("/console/login?next=/console/account")
    assert response.code == 302 and response.headers["Location"] == "/console/account"


@pytest.mark.gen_test(timeout=60)
async def test_a_new_sign_in_prunes_sessions_past_their_end(console, http_client, base_url, project):
    await console.login(project.admin.email)
    with db.block():
        row = Session.get()
        Session.update(expires_at=row.created_at).execute()
    await Console(http_client, base_url).login(project.admin.email)
    with db.block():
        assert Session.select().count() == 1 and Session.get().token_hash != row.token_hash


class TestIPv6Neighbours:
    """Behind a trusted proxy, addresses of one IPv6 /64 share one lockout budget (review L12)."""

    @pytest.fixture
    def config_overrides(self):
        return {"trust_proxy": True, "force_https": False}

    @pytest.mark.gen_test(timeout=60)
    async def test_one_slash_64_shares_the_lockout(self, console, project):
        email = project.admin.email
        for n in range(5):
            response = await console.post(
                "/console/login",
                {"email": email, "password": "wrong password"},
                headers={"X-Forwarded-For": f"2001:db8:1:2::{n + 1:x}"},
            )
            assert response.code in (401, 429), response.code
        # A sixth address of the same /64 is still locked out, even with the right password.
        same = await console.post(
            "/console/login",
            {"email": email, "password": PASSWORD},
            headers={"X-Forwarded-For": "2001:db8:1:2:ffff::9"},
        )
        assert same.code == 429
        # Another /64 is another client.
        other = await console.post(
            "/console/login", {"email": email, "password": PASSWORD}, headers={"X-Forwarded-For": "2001:db8:1:3::1"}
        )
        assert other.code == 302
