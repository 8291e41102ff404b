"""The inbox worker (pulse.inbox) in this process: queued events applied once, re-reads shared, failures retried."""

import asyncio

import pytest

from pulse import db, inbox, webhooks
from pulse.models import Subscription, WebhookEvent
from pulse.outcomes import Outcome
from pulse.security import SecretBox
from tests import stripe_events
from tests.support import TEST_SECRET
from tests.webhook_support import webhook_overrides

config_overrides = pytest.fixture(lambda fake_stripe: webhook_overrides(fake_stripe))


def queue(project, event):
    return webhooks.enqueue(project, event, stripe_events.body_of_event(event))


async def drain(config, seconds=10.0):
    """Run the worker until no event is pending (or `seconds` pass)."""
    stop = asyncio.Event()
    worker = asyncio.ensure_future(inbox.run(config, SecretBox(TEST_SECRET), stop))
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        with db.block():
            if not WebhookEvent.select().where(WebhookEvent.outcome == Outcome.RECEIVED).count():
                break
    stop.set()
    await worker


@pytest.mark.gen_test(timeout=30)
async def test_queued_events_about_one_subscription_share_one_stripe_read(app, config, fake_stripe, hooked):
    project = hooked.project
    session, sub = stripe_events.new_subscription(fake_stripe, "queued", project_id=project.public_id)
    fake_stripe.requests.clear()
    updates = [
        stripe_events.event("customer.subscription.updated", fake_stripe.subscription(sub["id"])) for _ in range(3)
    ]
    assert [queue(project, e) for e in updates] == [{"received": True, "queued": True}] * 3
    assert queue(project, updates[0]) == {"received": True, "duplicate": True}
    await drain(config)
    with db.block():
        outcomes = [row.outcome for row in WebhookEvent.select().order_by(WebhookEvent.id)]
        assert outcomes == [Outcome.PROCESSED] * 3
        assert Subscription.select().where(Subscription.stripe_subscription_id == sub["id"]).count() == 1
    # All three were stored before the first re-read started: one read serves them all.
    assert len(fake_stripe.calls("GET", f"/v1/subscriptions/{sub['id']}")) == 1

    later = stripe_events.event("customer.subscription.updated", fake_stripe.subscription(sub["id"]))
    queue(project, later)
    await drain(config)
    assert len(fake_stripe.calls("GET", f"/v1/subscriptions/{sub['id']}")) == 2  # stored after: read again


@pytest.mark.gen_test(timeout=30)
async def test_a_failed_event_waits_for_its_retry_time_and_a_stripe_retry_makes_it_due(
    app, config, fake_stripe, hooked
):
    project = hooked.project
    session, sub = stripe_events.new_subscription(fake_stripe, "flaky", project_id=project.public_id)
    event = stripe_events.event("checkout.session.completed", session)
    fake_stripe.fail_next(1, status=500, path="/v1/checkout/sessions")
    queue(project, event)
    await drain(config, seconds=1.0)
    with db.block():
        row = WebhookEvent.get(WebhookEvent.stripe_event_id == event["id"])
    assert (row.outcome, row.attempts) == (Outcome.FAILED, 2) and row.retry_at > db.utcnow()
    assert "http 500" in row.error
    await drain(config, seconds=0.5)  # not due yet: left alone
    with db.block():
        assert WebhookEvent.get_by_id(row.id).outcome == Outcome.FAILED
    assert queue(project, event) == {"received": True, "queued": True}  # Stripe's retry: due now
    await drain(config, seconds=0.5)
    with db.block():
        row = WebhookEvent.get_by_id(row.id)
        assert (row.outcome, row.retry_at) == (Outcome.PROCESSED, None)
        assert Subscription.select().where(Subscription.stripe_subscription_id == sub["id"]).count() == 1


@pytest.mark.gen_test(timeout=30)
async def test_one_bad_event_in_a_batch_fails_alone_and_the_others_are_applied(
    app, config, fake_stripe, hooked, monkeypatch
):
    from pulse import events

    project = hooked.project
    _, good = stripe_events.new_subscription(fake_stripe, "good", project_id=project.public_id)
    _, bad = stripe_events.new_subscription(fake_stripe, "bad", project_id=project.public_id)
    real = events.APPLY["customer.subscription.updated"]

    def apply(project, event, fetched):
        if fetched["subscription"]["id"] == bad["id"]:
            raise RuntimeError("a bug in one event's apply")
        return real(project, event, fetched)

    monkeypatch.setitem(events.APPLY, "customer.subscription.updated", apply)
    queued = [
        stripe_events.event("customer.subscription.updated", fake_stripe.subscription(s["id"])) for s in (bad, good)
    ]
    for event in queued:
        queue(project, event)
    await drain(config, seconds=2.0)
    with db.block():
        rows = {row.stripe_event_id: row for row in WebhookEvent.select()}
        assert rows[queued[0]["id"]].outcome == Outcome.FAILED and "RuntimeError" in rows[queued[0]["id"]].error
        assert rows[queued[1]["id"]].outcome == Outcome.PROCESSED  # not rolled back with the bad one
        assert Subscription.select().where(Subscription.stripe_subscription_id == good["id"]).count() == 1
