"""Scale-out: two real server processes on one database (and Redis) stay correct together (issue 6)."""

import asyncio
import json
import os
import signal
import time

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from pulse import apikeys, db
from pulse.models import ApiKey, Customer, Project, Subscription, WebhookEvent
from tests import stripe_events
from tests.fake_stripe import FAKE_SECRET_KEY
from tests.live_server import LiveServer
from tests.support import MYSQL_URL

REDIS_URL = os.environ.get("PULSE_TEST_REDIS_URL")
REQUIRE_ALL = os.environ.get("PULSE_TEST_REQUIRE_ALL") == "1"
WHSEC = "whsec_scaleout_" + "d" * 24

pytestmark = pytest.mark.slow


def test_ci_provides_mysql_and_redis():
    """CI (PULSE_TEST_REQUIRE_ALL=1) must run the two-process tests on MySQL and Redis, not only SQLite."""
    if REQUIRE_ALL:
        assert MYSQL_URL, "PULSE_TEST_MYSQL_URL is required for the scale-out tests"
        assert REDIS_URL, "PULSE_TEST_REDIS_URL is required for the scale-out tests"


def redis_url():
    if not REDIS_URL:
        if REQUIRE_ALL:
            pytest.fail("PULSE_TEST_REDIS_URL is required for the cross-process rate limit test")
        pytest.skip("cross-process rate limit test needs PULSE_TEST_REDIS_URL")
    return REDIS_URL


def servers(db_url, fake=None, count=2, **env):
    """`count` LiveServers (not yet started) on one database, pointed at the fake Stripe."""
    extra = (
        {"PULSE_STRIPE_API_BASE": fake.url, "PULSE_STRIPE_SECRET_KEY": FAKE_SECRET_KEY, "PULSE_STRIPE_MAX_RETRIES": "2"}
        if fake
        else {}
    )
    extra.update(env)
    return [LiveServer(db_url, env=extra) for _ in range(count)]


def stop_all(live):
    for server in live:
        server.stop()


async def call(server, method, path, key=None, body=None, headers=None):
    all_headers = dict(headers or {})
    if key:
        all_headers["X-API-Key"] = key
    if isinstance(body, dict):
        body = json.dumps(body)
        all_headers["Content-Type"] = "application/json"
    http = AsyncHTTPClient()
    return await http.fetch(
        HTTPRequest(server.base_url + path, method=method, headers=all_headers, body=body, request_timeout=30),
        raise_error=False,
    )


def checkout_body(user):
    return {
        "external_user_id": user,
        "email": f"{user}@example.test",
        "plan_slug": "pro",
        "stripe_price_id": "price_monthly",
        "success_url": "https://app.example.test/ok",
        "cancel_url": "https://app.example.test/cancel",
    }


@pytest.mark.gen_test(timeout=90)
async def test_simultaneous_checkouts_in_two_processes_make_one_stripe_customer(db_url, fake_stripe):
    live = servers(db_url, fake_stripe)
    try:
        for server in live:
            server.start()
        project = live[0].create_project("Scale")
        fake_stripe.latency = 0.2  # widen the window in which both processes are mid-flight
        responses = await asyncio.gather(
            *(
                call(live[i % 2], "POST", "/api/checkout", project["api_key"], checkout_body("race-user"))
                for i in range(8)
            )
        )
        assert [r.code for r in responses] == [200] * 8, [r.body for r in responses]
        assert len(fake_stripe.customers) == 1
        (stripe_customer,) = fake_stripe.customers
        sessions = {s["customer"] for s in fake_stripe.sessions.values()}
        assert sessions == {stripe_customer}
        db.bind(db_url)
        with db.block():
            rows = list(Customer.select().where(Customer.external_user_id == "race-user"))
        assert [row.stripe_customer_id for row in rows] == [stripe_customer]
    finally:
        stop_all(live)
        db.database.close()


@pytest.mark.gen_test(timeout=90)
async def test_one_webhook_delivered_to_both_processes_at_once_is_applied_once(db_url, fake_stripe):
    live = servers(db_url, fake_stripe)
    try:
        for server in live:
            server.start()
        project = live[0].create_project("Hooks", stripe_webhook_secret=WHSEC)
        session, sub = stripe_events.new_subscription(fake_stripe, "hook-user", project_id=project["project_id"])
        event = stripe_events.event("checkout.session.completed", session)
        body = stripe_events.body_of_event(event)
        path = f"/api/webhook/{project['project_id']}"
        responses = await asyncio.gather(
            *(
                call(
                    live[i % 2],
                    "POST",
                    path,
                    body=body,
                    headers={"Content-Type": "application/json", "Stripe-Signature": stripe_events.sign(body, WHSEC)},
                )
                for i in range(6)
            )
        )
        assert [r.code for r in responses] == [200] * 6, [r.body for r in responses]
        answers = [json.loads(r.body) for r in responses]
        assert sum(1 for a in answers if not a.get("duplicate")) == 1, answers
        db.bind(db_url)
        with db.block():
            assert WebhookEvent.select().where(WebhookEvent.stripe_event_id == event["id"]).count() == 1
            assert Subscription.select().where(Subscription.stripe_subscription_id == sub["id"]).count() == 1
        # Both processes read the applied state (and now hold it in their short read cache).
        for server in live:
            read = await call(server, "GET", "/api/subscription?external_user_id=hook-user", project["api_key"])
            assert read.code == 200, read.body
            assert json.loads(read.body)["stripe_subscription_id"] == sub["id"]
            assert json.loads(read.body)["has_access"] is True

        # A cancellation applied by process A: A shows it at once, B within the 2 s SPEC allows.
        fake_stripe.set_subscription(sub["id"], status="canceled")
        update = stripe_events.body_of_event(
            stripe_events.event("customer.subscription.updated", fake_stripe.subscription(sub["id"]))
        )
        applied = await call(
            live[0],
            "POST",
            path,
            body=update,
            headers={"Content-Type": "application/json", "Stripe-Signature": stripe_events.sign(update, WHSEC)},
        )
        assert applied.code == 200, applied.body
        read = await call(live[0], "GET", "/api/subscription?external_user_id=hook-user", project["api_key"])
        assert json.loads(read.body)["status"] == "cancelled"
        await asyncio.sleep(2.0)
        read = await call(live[1], "GET", "/api/subscription?external_user_id=hook-user", project["api_key"])
        assert json.loads(read.body)["status"] == "cancelled"
        assert json.loads(read.body)["has_access"] is False
    finally:
        stop_all(live)
        db.database.close()


@pytest.mark.gen_test(timeout=90)
async def test_rate_limit_is_counted_across_processes_with_redis(db_url):
    live = servers(db_url, PULSE_REDIS_URL=redis_url(), PULSE_RATE_LIMIT_AUTHENTICATED="10/minute")
    try:
        for server in live:
            server.start()
        project = live[0].create_project("Limited")
        responses = await asyncio.gather(
            *(
                call(live[i % 2], "GET", "/api/subscription?external_user_id=nobody", project["api_key"])
                for i in range(20)
            )
        )
        codes = [r.code for r in responses]
        assert codes.count(429) == 10, codes
        assert codes.count(404) == 10, codes  # admitted: an unknown user is a 404, not a 429
        assert {r.headers["X-RateLimit-Limit"] for r in responses} == {"10"}
        by_server = [sum(1 for i, r in enumerate(responses) if i % 2 == n and r.code == 404) for n in (0, 1)]
        assert sum(by_server) == 10
    finally:
        stop_all(live)


@pytest.mark.gen_test(timeout=90)
async def test_serve_with_two_processes_drains_in_flight_requests_on_sigterm(db_url, fake_stripe):
    (server,) = servers(db_url, fake_stripe, count=1)
    server.processes = 2
    try:
        server.start()
        project = server.create_project("Drain")
        assert server.healthy()
        fake_stripe.latency = 1.0  # the checkout is still in flight when SIGTERM arrives
        pending = asyncio.ensure_future(
            call(server, "POST", "/api/checkout", project["api_key"], checkout_body("drain-user"))
        )
        while not fake_stripe.requests:
            await asyncio.sleep(0.02)
        server.proc.send_signal(signal.SIGTERM)
        response = await pending
        assert response.code == 200, response.body
        assert json.loads(response.body)["url"]
        deadline = time.monotonic() + 20
        while server.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert server.proc.returncode == 0, "\n".join(server.logs[-20:])
    finally:
        server.stop()


@pytest.mark.gen_test(timeout=90)
async def test_key_revoked_by_another_process_stops_working_within_two_seconds(db_url):
    (server,) = servers(db_url, count=1)
    try:
        server.start()
        project = server.create_project("Revoke")
        path = "/api/subscription?external_user_id=nobody"
        assert (await call(server, "GET", path, project["api_key"])).code == 404  # authenticated (and cached)
        db.bind(db_url)
        with db.block():
            (key,) = list(ApiKey.select().join(Project).where(Project.public_id == project["project_id"]))
            apikeys.revoke(key)
        await asyncio.sleep(2.0)
        assert (await call(server, "GET", path, project["api_key"])).code == 401
    finally:
        server.stop()
        db.database.close()


def test_key_revoked_in_this_process_stops_working_at_once(app, project):
    with db.block():
        assert apikeys.authenticate(project.api_key.api_key) is not None  # now cached
        apikeys.revoke(project.api_key.record)
        assert apikeys.authenticate(project.api_key.api_key) is None


class Worker:
    """`run.py worker` (the inbox worker) on the environment of `server`; `.logs`, `.stop()`."""

    def __init__(self, server):
        import subprocess
        import sys
        import threading

        from tests.live_server import ROOT

        self.logs = []
        self.proc = subprocess.Popen(
            [sys.executable, "run.py", "worker"],
            cwd=ROOT,
            env=server.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.logs.append(line.rstrip("\n"))
                if "inbox worker started" in line:
                    started.set()
            started.set()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        assert started.wait(30) and self.proc.poll() is None, "\n".join(self.logs[-20:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        self._drain.join(5)
        self.proc.stderr.close()


def outcome_of(db_url, event_id):
    db.bind(db_url)
    with db.block():
        rows = list(WebhookEvent.select().where(WebhookEvent.stripe_event_id == event_id))
    db.database.close()
    return [(row.outcome, row.attempts, row.retry_at is not None) for row in rows]


async def eventually(check, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return await check()


@pytest.mark.gen_test(timeout=120)
async def test_two_servers_and_a_worker_apply_an_event_once_and_both_read_models_follow(db_url, fake_stripe):
    """PULSE_WEBHOOK_APPLY=worker: 200 once stored, applied once by the worker, visible everywhere within 2 s."""
    live = servers(db_url, fake_stripe, PULSE_WEBHOOK_APPLY="worker")
    worker = None
    try:
        for server in live:
            server.start()
        project = live[0].create_project("Queued", stripe_webhook_secret=WHSEC)
        key, path = project["api_key"], f"/api/webhook/{project['project_id']}"
        user_path = "/api/subscription?external_user_id=queued-user"
        for server in live:  # both read models now hold "no such customer"
            assert (await call(server, "GET", user_path, key)).code == 404
        session, sub = stripe_events.new_subscription(fake_stripe, "queued-user", project_id=project["project_id"])
        event = stripe_events.event("checkout.session.completed", session)
        body = stripe_events.body_of_event(event)
        headers = {"Content-Type": "application/json", "Stripe-Signature": stripe_events.sign(body, WHSEC)}
        responses = await asyncio.gather(
            *(call(live[i % 2], "POST", path, body=body, headers=headers) for i in range(6))
        )
        assert [r.code for r in responses] == [200] * 6, [r.body for r in responses]
        answers = [json.loads(r.body) for r in responses]
        assert sum(1 for a in answers if a.get("queued")) == 1 and sum(1 for a in answers if a.get("duplicate")) == 5
        assert outcome_of(db_url, event["id"]) == [("received", 1, False)]  # stored, not applied: no worker yet

        worker = Worker(live[0])

        async def applied():
            return outcome_of(db_url, event["id"]) == [("processed", 1, False)]

        assert await eventually(applied, 15), outcome_of(db_url, event["id"])
        for server in live:

            async def shows(server=server):
                read = await call(server, "GET", user_path, key)
                return read.code == 200 and json.loads(read.body)["stripe_subscription_id"] == sub["id"]

            assert await eventually(shows, 2.0), f"process on port {server.port} still answers the old state"

        # A Stripe outage while applying: recorded as failed with a retry time, retried by the worker.
        fake_stripe.set_subscription(sub["id"], status="canceled")
        update = stripe_events.event("customer.subscription.updated", fake_stripe.subscription(sub["id"]))
        update_body = stripe_events.body_of_event(update)
        fake_stripe.fail_next(3, status=500, path="/v1/subscriptions")  # the first try and both client retries
        stored = await call(
            live[1],
            "POST",
            path,
            body=update_body,
            headers={"Content-Type": "application/json", "Stripe-Signature": stripe_events.sign(update_body, WHSEC)},
        )
        assert json.loads(stored.body) == {"received": True, "queued": True}

        async def failed_once():
            return outcome_of(db_url, update["id"]) == [("failed", 2, True)]

        async def retried():
            return outcome_of(db_url, update["id"]) == [("processed", 2, False)]

        assert await eventually(failed_once, 10), outcome_of(db_url, update["id"])
        assert await eventually(retried, 15), outcome_of(db_url, update["id"])
        assert any("failed (attempt 2)" in line for line in worker.logs)
        for server in live:
            read = await call(server, "GET", user_path, key)
            assert json.loads(read.body)["status"] == "cancelled"  # the worker's change, within the 2 s bound
    finally:
        if worker:
            worker.stop()
        stop_all(live)
        db.database.close()
