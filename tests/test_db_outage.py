"""Database outage: the app talks to MySQL through a TCP proxy that the tests cut and restore.

While the database is gone the API answers 503 `database_unavailable` within a bound, health says
so, and after the database comes back the same process recovers without a restart.
"""

import os
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from pulse import db
from pulse.models import WebhookEvent
from tests.stripe_events import body_of_event, new_subscription, sign
from tests.support import MYSQL_URL, body_of
from tests.tcp_proxy import TcpProxy

# A request that hangs longer than this has not "failed quickly" (read_timeout is 30 s, connect 2 s).
BOUND = 12
WHSEC = "whsec_outage_" + "c" * 24


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides(stripe_max_retries=0)


def require_mysql():
    if not MYSQL_URL:
        pytest.fail("PULSE_TEST_MYSQL_URL is required for the database outage tests")


if not MYSQL_URL and os.environ.get("PULSE_TEST_REQUIRE_ALL") != "1":
    # Local runs without MySQL; CI sets PULSE_TEST_REQUIRE_ALL=1, and then a missing MySQL fails.
    pytest.skip("database outage tests need PULSE_TEST_MYSQL_URL", allow_module_level=True)


@pytest.fixture
def proxy():
    require_mysql()
    parts = urlsplit(MYSQL_URL)
    tcp = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 3306)
    yield tcp
    tcp.close()


@pytest.fixture
def db_url(request, proxy):
    """The run's MySQL database (emptied), reached through the proxy."""
    direct = request.getfixturevalue("mysql_database_url")
    from tests.support import empty_mysql

    empty_mysql(direct)
    parts = urlsplit(direct)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{proxy.port}", parts.path, parts.query, ""))


async def _get(api, path, key=None):
    return await api("GET", path, key=key, request_timeout=BOUND)


async def _wait_healthy(api, attempts=40):
    """Health until it says ok; recovery must come by itself, without a restart."""
    import asyncio

    for _ in range(attempts):
        response = await _get(api, "/api/health", key="")
        if response.code == 200:
            return response
        await asyncio.sleep(0.25)
    raise AssertionError(f"the service did not recover: {response.code} {response.body!r}")


def _assert_db_unavailable(response):
    assert response.code == 503, response.body
    assert body_of(response)["error"]["code"] == "database_unavailable"
    assert response.headers["X-Request-Id"]


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
async def test_health_reports_outage_and_recovers(api, proxy, mode):
    assert (await _get(api, "/api/health", key="")).code == 200
    proxy.cut(mode)
    for _ in range(3):
        response = await _get(api, "/api/health", key="")
        assert response.code == 503, response.body
        assert body_of(response)["status"] == "unavailable"
        assert body_of(response)["database"] == "error"
    proxy.restore()
    response = await _wait_healthy(api)
    assert body_of(response) == {"status": "ok", "database": "ok", "version": body_of(response)["version"]}


@pytest.mark.gen_test(timeout=90)
@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
async def test_authenticated_api_answers_503_and_recovers(api, proxy, mode, project):
    key = project.api_key.api_key
    # Warm the connection: the cut must hit a connection that is open and idle.
    assert (await _get(api, "/api/health", key="")).code == 200
    proxy.cut(mode)
    for _ in range(3):
        _assert_db_unavailable(await _get(api, "/api/subscription?external_user_id=u1", key=key))
    proxy.restore()
    await _wait_healthy(api)
    response = await _get(api, "/api/subscription?external_user_id=u1", key=key)
    assert response.code == 404, response.body  # authenticated again: the key resolves, the user is unknown
    assert body_of(response)["error"]["code"] == "not_found"


@pytest.mark.gen_test(timeout=60)
async def test_first_request_after_silent_restart_succeeds(api, proxy):
    """The server dropped our idle connection while nobody was asking: the next request must not pay for it."""
    assert (await _get(api, "/api/health", key="")).code == 200
    proxy.cut("refuse")
    proxy.restore()
    # No request saw the outage; the stale pooled connection is detected before use.
    response = await _get(api, "/api/health", key="")
    assert response.code == 200, response.body


def test_block_turns_a_dead_connection_into_database_unavailable(db_url, proxy):
    """pulse.db.block() directly: the error is DatabaseUnavailable, the next block reconnects."""
    db.bind(db_url)
    try:
        with db.block() as conn:
            assert conn.execute_sql("SELECT 1").fetchone()[0] == 1
        proxy.cut("refuse")
        with pytest.raises(db.DatabaseUnavailable):
            with db.block() as conn:
                conn.execute_sql("SELECT 1").fetchone()
        # While the database stays down, every block fails fast and cleanly.
        with pytest.raises(db.DatabaseUnavailable):
            with db.block() as conn:
                conn.execute_sql("SELECT 1").fetchone()
        proxy.restore()
        deadline = time.monotonic() + 10
        while True:
            try:
                with db.block() as conn:
                    assert conn.execute_sql("SELECT 1").fetchone()[0] == 1
                break
            except db.DatabaseUnavailable:
                assert time.monotonic() < deadline, "block() never reconnected"
                time.sleep(0.1)
    finally:
        db.database.close()


# ---------------------------------------------------------------- webhooks during an outage


def inbox(event_id):
    with db.block():
        return list(WebhookEvent.select().where(WebhookEvent.stripe_event_id == event_id))


def deliver(http_client, base_url, project, event):
    """One signed delivery (Stripe signs every retry afresh) -> response future."""
    body = body_of_event(event)
    return http_client.fetch(
        base_url + f"/api/webhook/{project.public_id}",
        method="POST",
        body=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, WHSEC)},
        raise_error=False,
        request_timeout=BOUND,
    )


async def assert_subscribed(api, hooked, user):
    response = await api("GET", f"/api/subscription?external_user_id={user}", key=hooked.api_key.api_key)
    assert response.code == 200, response.body
    assert body_of(response)["status"] == "active"
    assert body_of(response)["has_access"] is True


@pytest.mark.gen_test(timeout=90)
async def test_webhook_during_outage_is_5xx_and_the_retry_applies(
    api, proxy, fake_stripe, make_project, http_client, base_url
):
    hooked = make_project(name="Hooked", stripe_webhook_secret=WHSEC)
    session, _sub = new_subscription(fake_stripe, "outage-user", project_id=hooked.project.public_id)
    event = fake_stripe.event("checkout.session.completed", session)
    proxy.cut("refuse")
    response = await deliver(http_client, base_url, hooked.project, event)
    assert response.code == 503, response.body  # 5xx: Stripe will retry
    assert body_of(response)["error"]["code"] == "database_unavailable"
    proxy.restore()
    await _wait_healthy(api)
    assert inbox(event["id"]) == []  # nothing recorded, certainly nothing marked processed
    response = await deliver(http_client, base_url, hooked.project, event)
    assert response.code == 200, response.body
    assert body_of(response) == {"received": True, "outcome": "processed"}
    await assert_subscribed(api, hooked, "outage-user")


@pytest.mark.gen_test(timeout=90)
async def test_database_lost_while_the_webhook_awaits_stripe(
    api, proxy, fake_stripe, make_project, http_client, base_url
):
    """The cut lands between reading the project and writing the inbox (the handler is awaiting Stripe)."""
    import asyncio

    hooked = make_project(name="Hooked", stripe_webhook_secret=WHSEC)
    session, _sub = new_subscription(fake_stripe, "midflight-user", project_id=hooked.project.public_id)
    event = fake_stripe.event("checkout.session.completed", session)
    fake_stripe.latency = 1.0
    before = len(fake_stripe.requests)
    pending = deliver(http_client, base_url, hooked.project, event)
    for _ in range(100):  # wait until the app is inside its Stripe read
        if len(fake_stripe.requests) > before:
            break
        await asyncio.sleep(0.02)
    assert len(fake_stripe.requests) > before, "the webhook never asked Stripe"
    proxy.cut("refuse")
    response = await pending
    assert response.code == 503, response.body
    assert body_of(response)["error"]["code"] == "database_unavailable"
    fake_stripe.latency = 0.0
    proxy.restore()
    await _wait_healthy(api)
    assert all(row.outcome != "processed" for row in inbox(event["id"]))
    response = await deliver(http_client, base_url, hooked.project, event)
    assert response.code == 200, response.body
    assert body_of(response)["received"] is True and "duplicate" not in body_of(response)
    await assert_subscribed(api, hooked, "midflight-user")
    assert [row.outcome for row in inbox(event["id"])] == ["processed"]
