"""Crash safety: `kill -9` the real server in the middle of a burst of signed webhook deliveries.

Stripe redelivers whatever was not acknowledged with a 2xx. After a restart and those redeliveries,
the stored state must equal Stripe's, and every event that was acknowledged must be in the inbox:
a 200 is a promise that the event is durably stored.
"""

import asyncio
import json

import pytest
import tornado.httpclient

from pulse import db
from pulse.models import Customer, Subscription, WebhookEvent
from tests.fake_stripe import FAKE_SECRET_KEY
from tests.live_server import LiveServer
from tests.stripe_events import body_of_event, new_subscription, sign
from tests.support import TEST_SECRET
from tests.webhook_support import truth

WHSEC = "whsec_crash_" + "d" * 24
USERS = 12


def server_for(db_url, fake):
    return LiveServer(
        db_url,
        env={
            "PULSE_SECRET_KEY": TEST_SECRET,
            "PULSE_STRIPE_API_BASE": fake.url,
            "PULSE_STRIPE_SECRET_KEY": FAKE_SECRET_KEY,
            "PULSE_STRIPE_MAX_RETRIES": "0",
            "PULSE_STRIPE_TIMEOUT": "5",
        },
    )


def stripe_history(fake, project_id):
    """A realistic stream: checkouts, then changes made in Stripe, each with its event."""
    events, subs = [], {}
    changes = [
        dict(status="past_due"),
        dict(cancel_at_period_end=True),
        dict(status="canceled"),
        dict(status="active", cancel_at_period_end=False),
    ]
    for n in range(USERS):
        user = f"crash-user-{n}"
        session, sub = new_subscription(fake, user, project_id=project_id)
        subs[user] = sub["id"]
        events.append(fake.event("checkout.session.completed", session))
        for change in changes[: n % len(changes) + 1]:
            events.append(fake.event("customer.subscription.updated", fake.set_subscription(sub["id"], **change)))
    return events, subs


async def deliver_all(client, server, project_id, events):
    """Deliver every event at once; returns {event id: status code or None (connection failed)}."""

    async def one(event):
        body = body_of_event(event)
        try:
            response = await client.fetch(
                server.base_url + f"/api/webhook/{project_id}",
                method="POST",
                body=body,
                raise_error=False,
                headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, WHSEC)},
                request_timeout=30,
            )
        except (OSError, tornado.httpclient.HTTPClientError):
            return event["id"], None
        return event["id"], (response.code if response.code != 599 else None)

    return dict(await asyncio.gather(*(one(event) for event in events)))


@pytest.mark.gen_test(timeout=120)
async def test_kill_9_mid_burst_then_redelivery_matches_stripe(db_url, fake_stripe, make_project):
    hooked = make_project(name="Crash", stripe_webhook_secret=WHSEC)
    project_id = hooked.project.public_id
    events, subs = stripe_history(fake_stripe, project_id)
    fake_stripe.latency = 0.05  # every apply awaits Stripe a little: many deliveries are in flight at once
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=64)
    server = server_for(db_url, fake_stripe).start()
    try:
        burst = asyncio.ensure_future(deliver_all(client, server, project_id, events))
        # Kill once some, but not all, deliveries were acknowledged.
        for _ in range(600):
            done = sum(1 for row in _inbox(hooked.project) if row.outcome == "processed")
            if done >= len(events) // 4:
                break
            await asyncio.sleep(0.01)
        server.kill()
        first = await burst
    finally:
        server.kill()

    acknowledged = {event_id for event_id, code in first.items() if code == 200}
    assert 0 < len(acknowledged) < len(events), f"the kill did not land mid-burst ({len(acknowledged)} acked)"
    # Every 200 was a promise: the event is in the inbox, applied.
    stored = {row.stripe_event_id: row.outcome for row in _inbox(hooked.project)}
    for event_id in acknowledged:
        assert stored.get(event_id) == "processed", (event_id, stored.get(event_id))

    fake_stripe.latency = 0.0
    server = server_for(db_url, fake_stripe).start()
    try:
        unacked = [event for event in events if event["id"] not in acknowledged]
        again = await deliver_all(client, server, project_id, unacked)
        assert set(again.values()) == {200}, again
        for user, sub_id in subs.items():
            status, _, body = server.request(
                "GET", f"/api/subscription?external_user_id={user}", headers={"X-API-Key": hooked.api_key.api_key}
            )
            assert status == 200, body
            found = json.loads(body)
            expected = truth(fake_stripe, sub_id)
            assert {k: found[k] for k in expected} == expected, user
    finally:
        server.stop()
        client.close()

    rows = _inbox(hooked.project)
    assert sorted(row.stripe_event_id for row in rows) == sorted(event["id"] for event in events)
    assert {row.outcome for row in rows} == {"processed"}
    with db.block():
        assert Customer.select().where(Customer.project == hooked.project).count() == USERS
        assert Subscription.select().where(Subscription.project == hooked.project).count() == USERS
    assert "Traceback" not in "\n".join(server.logs)


def _inbox(project):
    with db.block():
        return list(WebhookEvent.select().where(WebhookEvent.project == project))
