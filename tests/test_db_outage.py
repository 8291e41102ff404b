"""Database outage: the app talks to MySQL through a TCP proxy that the tests cut and restore.

While the database is gone the API answers 503 `database_unavailable` within a bound, health says
so, and after the database comes back the same process recovers without a restart.
"""

import os
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from pulse import db
from tests.conftest import MYSQL_URL, body_of
from tests.tcp_proxy import TcpProxy

# A request that hangs longer than this has not "failed quickly" (read_timeout is 30 s, connect 2 s).
BOUND = 12


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
    from tests.conftest import _empty_mysql
    _empty_mysql(direct)
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
