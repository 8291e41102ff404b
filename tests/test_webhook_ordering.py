"""Webhook order and concurrency: whatever Stripe delivers, and however, state ends equal to Stripe's."""

import asyncio
import dataclasses
import time

import pytest

from pulse import db, webhooks
from pulse.config import RateLimit
from pulse.models import Customer, Subscription
from tests.conftest import body_of
from tests.stripe_events import NEW_API, body_of_event, event, invoice, new_subscription
from tests.webhook_support import (  # noqa: F401 (config_overrides, deliver, hooked, read are fixtures)
    BOTH_SHAPES, assert_matches_stripe, config_overrides, deliver, events_of, hooked, read)


# ---------------------------------------------------------------- order does not matter (property-style)

SEEDS = list(range(30))


def _mutations(rng, period_end):
    """A random story of one subscription at Stripe: (changes, event types it emits)."""
    steps = []
    for _ in range(rng.randint(2, 6)):
        pick = rng.choice(["past_due", "recover", "cancel_period_end", "cancel_at_only", "uncancel", "upgrade",
                           "renew", "pause", "unpaid"])
        if pick == "past_due":
            steps.append(({"status": "past_due"}, ["invoice.payment_failed", "customer.subscription.updated"]))
        elif pick == "recover":
            steps.append(({"status": "active"}, ["invoice.paid", "customer.subscription.updated"]))
        elif pick == "cancel_period_end":
            steps.append(({"cancel_at_period_end": True, "cancel_at": period_end},
                          ["customer.subscription.updated"]))
        elif pick == "cancel_at_only":  # flexible billing mode, or a portal cancellation at a date
            steps.append(({"cancel_at_period_end": False, "cancel_at": period_end - 3600},
                          ["customer.subscription.updated"]))
        elif pick == "uncancel":
            steps.append(({"cancel_at_period_end": False, "cancel_at": None}, ["customer.subscription.updated"]))
        elif pick == "upgrade":
            steps.append(({"price": "price_yearly", "interval": "year"}, ["customer.subscription.updated"]))
        elif pick == "renew":
            period_end += 30 * 86400
            steps.append(({"current_period_end": period_end, "status": "active"},
                          ["invoice.paid", "customer.subscription.updated"]))
        elif pick == "pause":
            steps.append(({"status": "paused"}, ["customer.subscription.paused"]))
        else:
            steps.append(({"status": "unpaid"}, ["customer.subscription.updated"]))
    if rng.random() < 0.3:
        steps.append(({"status": "canceled"}, ["customer.subscription.deleted"]))
    return steps


def _event_for(fake, kind, sub_id, api_version, session):
    current = fake.subscription(sub_id, api_version)
    if kind == "checkout.session.completed":
        return event(kind, session, api_version)
    if kind.startswith("invoice."):
        return event(kind, invoice(current, api_version, paid=kind == "invoice.paid"), api_version)
    return event(kind, current, api_version)


@pytest.mark.gen_test(timeout=120)
async def test_random_delivery_orders_end_in_stripes_state(read, fake_stripe, hooked, deliver):
    """Deliveries late, early (subscription before checkout), repeated and concurrent, with Stripe changing
    in between: every seed ends with GET /api/subscription equal to Stripe's final state."""
    import random

    for seed in SEEDS:
        rng = random.Random(seed)
        api_version = rng.choice(BOTH_SHAPES)
        fake_stripe.api_version = api_version
        user = f"prop-{seed}"
        session, sub = new_subscription(fake_stripe, user, status=rng.choice(["active", "trialing"]))
        period_end = fake_stripe.subscription(sub["id"], NEW_API)["items"]["data"][0]["current_period_end"]
        pending = [_event_for(fake_stripe, kind, sub["id"], api_version, session)
                   for kind in ("checkout.session.completed", "customer.subscription.created", "invoice.paid")]
        delivered, story = [], _mutations(rng, period_end)
        while story or pending:
            roll = rng.random()
            if story and (roll < 0.35 or not pending):
                changes, kinds = story.pop(0)
                fake_stripe.set_subscription(sub["id"], **changes)
                pending += [_event_for(fake_stripe, kind, sub["id"], api_version, session) for kind in kinds]
                continue
            if delivered and roll < 0.5:  # Stripe redelivers something old
                batch = [rng.choice(delivered)]
            else:
                rng.shuffle(pending)
                size = rng.choice([1, 1, 2, 3])  # several at once: concurrent deliveries
                batch, pending = pending[:size], pending[size:]
            responses = await asyncio.gather(*(deliver(e) for e in batch))
            assert all(r.code == 200 for r in responses), [r.body for r in responses]
            delivered += [e for e in batch if e not in delivered]
        found = await read(hooked, user)
        assert_matches_stripe(found, fake_stripe, sub["id"])
        ids = {e["id"] for e in delivered}
        rows = [r for r in events_of(hooked.project) if r.stripe_event_id in ids]
        assert len(rows) == len(delivered), seed
        assert {r.outcome for r in rows} == {"processed"}, seed


@pytest.mark.gen_test(timeout=60)
async def test_without_a_stripe_key_an_older_snapshot_never_overwrites_a_newer_one(read, fake_stripe, hooked, deliver,
                                                                                    app):
    """Payload-only mode (no Stripe key to re-fetch with): ordering by the event's `created`."""
    import dataclasses
    import random

    app.settings["config"] = dataclasses.replace(app.settings["config"], stripe_secret_key=None)
    for seed in range(10):
        rng = random.Random(1000 + seed)
        api_version = rng.choice(BOTH_SHAPES)
        user = f"payload-{seed}"
        session, sub = new_subscription(fake_stripe, user)
        created = int(time.time()) - 1000
        events = [event("customer.subscription.created", fake_stripe.subscription(sub["id"], api_version),
                        api_version, created=created)]
        for step, (changes, _) in enumerate(_mutations(rng, created + 86400 * 30), start=1):
            fake_stripe.set_subscription(sub["id"], **changes)
            events.append(event("customer.subscription.updated", fake_stripe.subscription(sub["id"], api_version),
                                api_version, created=created + 10 * step))
        schedule = events + [rng.choice(events) for _ in range(3)]
        rng.shuffle(schedule)
        for evt in schedule:
            assert (await deliver(evt)).code == 200
        assert_matches_stripe(await read(hooked, user), fake_stripe, sub["id"])
    assert not fake_stripe.calls("GET", "/v1/subscriptions/")


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_deliveries_on_separate_connections_like_two_processes(read, fake_stripe, hooked, app):
    """Each thread has its own event loop and database connection, as two server processes would:
    the same event four times plus the other events of a brand-new subscription, all at once."""
    import concurrent.futures

    session, sub = new_subscription(fake_stripe, "twoproc")
    events = [event("checkout.session.completed", session), event("customer.subscription.created", sub),
              event("invoice.paid", invoice(sub))]
    deliveries = [events[0]] * 4 + events[1:] * 2
    config, box = app.settings["config"], app.settings["secret_box"]
    start = __import__("threading").Barrier(len(deliveries))

    def in_other_process(evt):
        async def go():
            from pulse import billing
            try:
                return await webhooks.process(hooked.project, evt, body_of_event(evt), config=config, box=box)
            finally:
                await billing.close_clients()
        start.wait()
        try:
            return asyncio.run(go())
        finally:
            db.database.close()

    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(len(deliveries)) as pool:
        results = await asyncio.gather(*(loop.run_in_executor(pool, in_other_process, e) for e in deliveries))
    assert sorted(r.get("outcome", "duplicate") for r in results) == ["duplicate"] * 5 + ["processed"] * 3
    rows = events_of(hooked.project)
    assert sorted(r.type for r in rows) == sorted(e["type"] for e in events)
    assert {r.outcome for r in rows} == {"processed"} and {r.attempts for r in rows} == {1}
    with db.block():
        assert Customer.select().where(Customer.project == hooked.project).count() == 1
        assert Subscription.select().where(Subscription.project == hooked.project).count() == 1
    assert_matches_stripe(await read(hooked, "twoproc"), fake_stripe, sub["id"])


@pytest.mark.gen_test(timeout=30)
async def test_a_flood_of_forgeries_is_answered_but_recorded_only_up_to_a_cap(fake_stripe, hooked, deliver,
                                                                               monkeypatch):
    monkeypatch.setattr(webhooks, "INVALID_RECORDS_PER_ADDRESS", RateLimit(3, 60))
    for _ in range(6):
        resp = await deliver('{"id": "evt_x"}', secret="whsec_forged")
        assert resp.code == 400 and body_of(resp)["error"]["code"] == "invalid_signature"
    assert len(events_of(hooked.project, outcome="invalid_signature")) == 3


@pytest.mark.gen_test(timeout=30)
async def test_forgeries_from_rotating_addresses_are_capped_per_project(app, fake_stripe, hooked, make_project,
                                                                        deliver, monkeypatch):
    """Security review L4/L10: a fresh address per forgery (here, behind a trusted proxy) gets no fresh budget."""
    config = app.settings["config"]
    app.settings["config"] = dataclasses.replace(config, trust_proxy=True)
    monkeypatch.setattr(webhooks, "INVALID_RECORDS_PER_PROJECT", RateLimit(5, 3600))
    for i in range(12):
        via = {"X-Forwarded-For": f"198.51.100.{i}" if i % 2 else f"2001:db8:{i}::1", "X-Forwarded-Proto": "https"}
        resp = await deliver('{"id": "evt_x"}', secret="whsec_forged", headers=via)
        assert resp.code == 400 and body_of(resp)["error"]["code"] == "invalid_signature"
    rows = events_of(hooked.project, outcome="invalid_signature")
    assert len(rows) == 5 and {r.remote_ip for r in rows} == {"2001:db8::1", "198.51.100.1", "2001:db8:2::1",
                                                              "198.51.100.3", "2001:db8:4::1"}
    # Another project's budget is its own.
    other = make_project(name="Other", stripe_webhook_secret="whsec_other")
    resp = await deliver('{"id": "evt_x"}', secret="whsec_forged", path=f"/api/webhook/{other.project.public_id}")
    assert resp.code == 400
    assert len(events_of(other.project, outcome="invalid_signature")) == 1
