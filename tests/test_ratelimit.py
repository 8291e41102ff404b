"""Rate limits (SPEC 3.1): exact moving window, in process and through Redis, and the HTTP glue."""

import asyncio
import logging
import math
import os
import random
import secrets
import time

import pytest

from handlers.base import ApiError, ApiHandler
from pulse.config import RateLimit
from pulse.ratelimit import MemoryLimiter, RedisLimiter, address_bucket
from tests.support import body_of

REDIS_URL = os.environ.get("PULSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_limiter(prefix=None):
    return RedisLimiter(REDIS_URL, prefix=prefix or f"pulse:test:{secrets.token_hex(6)}")


def limiter_for(backend):
    return MemoryLimiter() if backend == "memory" else redis_limiter()


async def sleep_until(moment):
    await asyncio.sleep(max(0.0, moment - time.time()))


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_burst_then_refused_until_the_oldest_ages_out(backend):
    limiter, rate = limiter_for(backend), RateLimit(3, 2)
    try:
        start = time.time()
        first = await limiter.hit("k", rate)
        assert (first.allowed, first.limit, first.remaining) == (True, 3, 2)
        assert first.reset == math.ceil(start + 2) or first.reset == math.ceil(time.time() + 2)
        await sleep_until(start + 0.5)
        assert (await limiter.hit("k", rate)).remaining == 1
        assert (await limiter.hit("k", rate)).remaining == 0
        refused = await limiter.hit("k", rate)
        assert not refused.allowed and refused.remaining == 0
        assert refused.retry_after in (1, 2) and refused.headers()["Retry-After"] == str(refused.retry_after)
        await sleep_until(start + 1.8)
        assert not (await limiter.hit("k", rate)).allowed  # refused hits are not counted...
        await sleep_until(start + 2.1)
        again = await limiter.hit("k", rate)  # ...so the first slot frees 2 s after the first hit
        assert again.allowed and again.remaining == 0
        assert not (await limiter.hit("k", rate)).allowed  # the two hits at +0.5 s still fill it
        assert (await limiter.hit("other", rate)).remaining == 2
    finally:
        await limiter.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_no_window_ever_admits_more_than_the_limit(backend):
    """A fixed window would admit 2N around each boundary; the moving window never more than N."""
    limiter, rate, rng, admitted = limiter_for(backend), RateLimit(5, 1), random.Random(7), []
    try:
        for _ in range(60):
            await asyncio.sleep(rng.choice([0.0, 0.0, 0.001, 0.02, 0.1, 0.2, 0.45]))
            before = time.time()
            if (await limiter.hit("k", rate)).allowed:
                admitted.append(before)
    finally:
        await limiter.close()
    assert len(admitted) > 15
    for i, end in enumerate(admitted):
        # Every 1 s window ending on an admission holds at most 5 (2 ms slack for the clock reads).
        assert sum(1 for t in admitted[: i + 1] if t > end - 1 + 0.002) <= 5


@pytest.mark.gen_test
async def test_redis_counters_are_shared_by_processes():
    prefix = f"pulse:test:{secrets.token_hex(6)}"
    one, two = redis_limiter(prefix), redis_limiter(prefix)
    try:
        results = [await (one if i % 2 else two).hit("project:p", RateLimit(4, 60)) for i in range(6)]
    finally:
        await one.close()
        await two.close()
    assert [r.allowed for r in results] == [True] * 4 + [False] * 2


@pytest.mark.gen_test
async def test_unreachable_redis_fails_open_to_per_process_counting(caplog):
    limiter = RedisLimiter("redis://127.0.0.1:1/0", prefix="pulse:test")
    with caplog.at_level(logging.WARNING, logger="pulse.ratelimit"):
        results = [await limiter.hit("k", RateLimit(2, 60)) for _ in range(3)]
    await limiter.close()
    assert [r.allowed for r in results] == [True, True, False]
    assert sum("redis unavailable" in r.message for r in caplog.records) == 1  # then it stops trying for a while


@pytest.mark.parametrize(
    "ip,bucket",
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::1", "::/64"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_address_bucket_groups_ipv6_by_64(ip, bucket):
    assert address_bucket(ip) == bucket


# ---------------------------------------------------------------- over HTTP


class WhoAmI(ApiHandler):
    def get(self):
        self.write_json({"project": self.project.public_id})

    def delete(self):
        raise ApiError(404, "not_found", "nothing here")


class FakeWebhook(ApiHandler):
    auth_required = False

    def post(self):
        self.write_json({"received": True})


@pytest.fixture
def config_overrides():
    return {"rate_limit_authenticated": RateLimit(3, 60), "rate_limit_anonymous": RateLimit(2, 60)}


@pytest.fixture
def app(app):
    app.add_handlers(r".*", [(r"/api/_test/whoami", WhoAmI), (r"/api/webhook/_test", FakeWebhook)])
    return app


@pytest.mark.gen_test
async def test_authenticated_requests_are_counted_per_project(api, make_project):
    responses = [await api("GET", "/api/_test/whoami") for _ in range(3)]
    assert [r.code for r in responses] == [200, 200, 200]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["2", "1", "0"]
    assert all(r.headers["X-RateLimit-Limit"] == "3" and int(r.headers["X-RateLimit-Reset"]) > 1e9 for r in responses)
    refused = await api("GET", "/api/_test/whoami")
    assert refused.code == 429
    assert body_of(refused)["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    other = make_project(name="Other")
    response = await api("GET", "/api/_test/whoami", key=other.api_key.api_key)
    assert response.code == 200 and response.headers["X-RateLimit-Remaining"] == "2"


@pytest.mark.gen_test
async def test_error_responses_keep_the_headers(api):
    response = await api("DELETE", "/api/_test/whoami")
    assert response.code == 404
    assert response.headers["X-RateLimit-Remaining"] == "2"


@pytest.mark.gen_test
async def test_failed_auth_and_anonymous_requests_are_counted_per_ip(api):
    bad = [await api("GET", "/api/_test/whoami", key="pp_live_" + "x" * 40) for _ in range(2)]
    assert [r.code for r in bad] == [401, 401]
    assert bad[1].headers["X-RateLimit-Limit"] == "2" and bad[1].headers["X-RateLimit-Remaining"] == "0"
    refused = await api("GET", "/api/health", key="")  # same IP, unauthenticated: same bucket
    assert refused.code == 429 and "Retry-After" in refused.headers
    ok = await api("GET", "/api/_test/whoami")  # a valid key counts against its project instead
    assert ok.code == 200


@pytest.mark.gen_test
async def test_webhooks_are_exempt_from_the_anonymous_limit(api):
    codes = [(await api("POST", "/api/webhook/_test", key="", body="{}")).code for _ in range(5)]
    assert codes == [200] * 5
    assert (await api("GET", "/api/health", key="")).headers["X-RateLimit-Remaining"] == "1"
