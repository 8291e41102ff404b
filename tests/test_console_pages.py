"""Console pages: each renders for a member, refuses non-members, and fails as a page (403, 404, 500, 503, XSRF)."""

import pytest

from pulse import apikeys, db
from pulse.models import ApiKey, WebhookEvent
from tests.console_support import text, url

PAGES = [
    "",
    "keys",
    "customers",
    "customers?q=user-00&status=active",
    "customers/user-000",
    "events",
    "events?outcome=failed&type=customer.updated",
    "events/{failed}",
    "settings",
    "audit",
    "export?format=csv",
    "export?format=json",
]
POSTS = [
    "keys",
    "keys/{key}/rotate",
    "keys/{key}/revoke",
    "events/{failed}/reapply",
    "settings/stripe",
    "settings/policy",
    "settings/check",
]


@pytest.mark.gen_test(timeout=60)
async def test_every_page_renders_for_a_member_with_security_headers(console, project, seeded):
    await console.login(project.admin.email)
    for suffix in PAGES:
        response = await console.get(url(project, suffix, seeded))
        assert response.code == 200, suffix
        headers = response.headers
        assert (
            "script-src 'self'" in headers["Content-Security-Policy"]
            and "unsafe-inline" not in headers["Content-Security-Policy"]
        )
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "same-origin"
        if headers["Content-Type"].startswith("text/html"):
            body = text(response)
            assert "<script>" not in body and "style=" not in body and " on" + "click=" not in body, suffix
            assert project.project.name in body
    for path in ("/console/", "/console/account"):
        response = await console.get(path)
        assert response.code in (200, 302)


@pytest.mark.gen_test(timeout=60)
async def test_pages_need_a_session(console, project, seeded):
    for suffix in PAGES:
        response = await console.get(url(project, suffix, seeded))
        assert response.code == 302, suffix
        assert response.headers["Location"].startswith("/console/login?next=%2Fconsole%2Fp%2F")
    for suffix in POSTS:
        assert (await console.post(url(project, suffix, seeded))).code == 403, suffix


@pytest.mark.gen_test(timeout=60)
async def test_non_members_get_403_on_every_project_page(console, project, seeded, make_project):
    stranger = make_project(name="Other")
    await console.login(stranger.admin.email)
    for suffix in PAGES:
        response = await console.get(url(project, suffix, seeded))
        assert response.code == 403, suffix
        assert project.project.name not in text(response)  # not even the name leaks
    for suffix in POSTS:
        assert (await console.post(url(project, suffix, seeded), {"label": "x", "grace": "now"})).code == 403
    with db.block():
        assert ApiKey.select().where(ApiKey.project == project.project).count() == 1
        assert apikeys.status(ApiKey.get(ApiKey.public_id == project.api_key.key_id)) == "active"
    # The switcher and the index only list the user's own projects.
    response = await console.get("/console/")
    assert response.headers["Location"] == f"/console/p/{stranger.project.public_id}/"


@pytest.mark.gen_test(timeout=60)
async def test_unknown_things_are_404_pages(console, project, seeded):
    await console.login(project.admin.email)
    for path in (
        "/console/p/proj_doesnotexist/",
        "/console/p/proj_doesnotexist/keys",
        "/console/nope",
        url(project, "customers/nobody", seeded),
        url(project, "events/999999", seeded),
        url(project, "keys/key_unknown/revoke", seeded),
    ):
        response = await console.get(path) if "revoke" not in path else await console.post(path)
        assert response.code == 404, path
        assert "Page not found" in text(response) or "No " in text(response)
        assert "Traceback" not in text(response)


@pytest.mark.gen_test(timeout=60)
async def test_a_user_with_two_projects_switches_between_them(console, project, make_project, seeded):
    second = make_project(name="Second", admin_email=project.admin.email)
    await console.login(project.admin.email)
    response = await console.get("/console/")
    assert response.code == 200
    assert project.project.public_id in text(response) and second.project.public_id in text(response)
    page = text(await console.get(url(project, "keys", seeded)))
    assert f"/console/p/{second.project.public_id}/" in page  # the switcher


@pytest.mark.gen_test(timeout=60)
async def test_the_switcher_is_there_on_public_and_404_pages_too(console, project, seeded):
    await console.login(project.admin.email)
    for path in ("/status", "/console/no-such-page"):
        body = text(await console.get(path))
        assert f'href="/console/p/{project.project.public_id}/"' in body, path


@pytest.mark.gen_test(timeout=60)
async def test_every_form_needs_the_xsrf_token(console, project, seeded):
    await console.login(project.admin.email)
    for suffix in POSTS:
        response = await console.post(url(project, suffix, seeded), {"label": "x", "grace": "now"}, xsrf=False)
        assert response.code == 403, suffix
    assert (await console.post("/console/account", {}, xsrf=False)).code == 403
    with db.block():
        assert ApiKey.select().where(ApiKey.project == project.project).count() == 1
        assert WebhookEvent.get_by_id(seeded["failed"]).outcome == "failed"
    for page in ("", "keys", "events/{failed}", "settings"):
        body = text(await console.get(url(project, page, seeded)))
        assert body.count('method="post"') == body.count('name="_xsrf"') > 0, page


@pytest.mark.gen_test(timeout=60)
async def test_errors_render_the_error_page_never_a_traceback(console, project, seeded, monkeypatch):
    from pulse import insights

    def broken(project):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(insights, "status_counts", broken)
    await console.login(project.admin.email)
    response = await console.get(url(project, "", seeded))
    assert response.code == 500
    body = text(response)
    assert "Something went wrong" in body and "secret internals" not in body and "Traceback" not in body
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")
    response = await console.get("/console/logout")
    assert response.code == 405 and "Method not allowed" in text(response)


@pytest.mark.gen_test(timeout=60)
async def test_database_outage_gives_a_503_page_and_the_status_page_still_renders(
    console, project, seeded, monkeypatch
):
    from pulse import sessions
    from pulse.db import DatabaseUnavailable

    await console.login(project.admin.email)

    def down(raw):
        raise DatabaseUnavailable()

    monkeypatch.setattr(sessions, "session_user", down)
    response = await console.get(url(project, "keys", seeded))
    assert response.code == 503 and "Service unavailable" in text(response)
    response = await console.get("/status")
    assert response.code == 200 and "Service status" in text(response)
