"""GET /api/health and the public /status page."""

import pytest

from handlers.health import prefers_html
from pulse import __version__
from tests.support import body_of


@pytest.mark.gen_test
async def test_health_needs_no_key(api):
    response = await api("GET", "/api/health", key="")
    assert response.code == 200
    assert body_of(response) == {"status": "ok", "database": "ok", "version": __version__}
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"


@pytest.mark.gen_test
async def test_browsers_are_sent_to_the_status_page(api):
    response = await api(
        "GET",
        "/api/health",
        key="",
        headers={"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
    )
    assert response.code == 302
    assert response.headers["Location"] == "/status"


@pytest.mark.gen_test
async def test_health_reports_a_database_it_cannot_reach(api, app):
    from pulse import db

    working = db.database.obj
    db.bind("sqlite:////nonexistent-dir/for/sure/pulse.db")
    try:
        response = await api("GET", "/api/health", key="")
    finally:
        db.database.initialize(working)
    assert response.code == 503
    assert body_of(response) == {"status": "unavailable", "database": "error", "version": __version__}
    assert (await api("GET", "/api/health", key="")).code == 200


@pytest.mark.gen_test
async def test_status_page(http_client, base_url):
    response = await http_client.fetch(base_url + "/status")
    html = response.body.decode()
    assert response.code == 200 and "All systems operational" in html and __version__ in html
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    "accept,expected",
    [
        ("text/html", True),
        ("application/json", False),
        ("*/*", False),
        (None, False),
        ("application/json, text/html;q=0.5", False),
        ("text/html;q=0.9, application/json;q=0.1", True),
        ("text/html;q=0", False),
    ],
)
def test_prefers_html(accept, expected):
    assert prefers_html(accept) is expected
