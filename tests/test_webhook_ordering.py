"""Webhook order and concurrency: whatever Stripe delivers, and however, state ends equal to Stripe's."""

import asyncio
import dataclasses
import threading
import time

import pytest

from pulse import db, webhooks
from pulse.config import RateLimit
from pulse.models import Customer, Subscription
from tests.stripe_events import NEW_API, body_of_event, customer_object, event, invoice, new_subscription
from tests.support import body_of
from tests.webhook_support import BOTH_SHAPES, assert_matches_stripe, events_of, webhook_overrides

config_overrides = pytest.fixture(lambda fake_stripe: webhook_overrides(fake_stripe))


# ---------------------------------------------------------------- order does not matter (property-style)

SEEDS = list(range(30))


def _mutations(rng, period_end):
    """A random story of one subscription at Stripe: (changes, event types it emits)."""
    steps = []
    for _ in range(rng.randint(2, 6)):
        pick = rng.choice(
            [
                "past_due",
                "recover",
                "cancel_period_end",
                "cancel_at_only",
                "uncancel",
                "upgrade",
                "renew",
                "pause",
                "unpaid",
                "quarterly",
                "weekly_lookup",
                "seats",
                "pause_collection",
                "resume_collection",
            ]
        )
        if pick == "past_due":
            steps.append(({"status": "past_due"}, ["invoice.payment_failed", "customer.subscription.updated"]))
        elif pick == "recover":
            steps.append(({"status": "active"}, ["invoice.paid", "customer.subscription.updated"]))
        elif pick == "cancel_period_end":
            steps.append(({"cancel_at_period_end": True, "cancel_at": period_end}, ["customer.subscription.updated"]))
        elif pick == "cancel_at_only":  # flexible billing mode, or a portal cancellation at a date
            steps.append(
                ({"cancel_at_period_end": False, "cancel_at": period_end - 3600}, ["customer.subscription.updated"])
            )
        elif pick == "uncancel":
            steps.append(({"cancel_at_period_end": False, "cancel_at": None}, ["customer.subscription.updated"]))
        elif pick == "upgrade":
            steps.append(({"price": "price_yearly", "interval": "year"}, ["customer.subscription.updated"]))
        elif pick == "renew":
            period_end += 30 * 86400
            steps.append(
                (
                    {"current_period_end": period_end, "status": "active"},
                    ["invoice.paid", "customer.subscription.updated"],
                )
            )
        elif pick in ("quarterly", "weekly_lookup"):  # a Portal or Dashboard swap; prices from _add_prices
            steps.append(({"price": f"price_{pick}"}, ["customer.subscription.updated"]))
        elif pick == "seats":
            steps.append(({"quantity": rng.randint(2, 9)}, ["customer.subscription.updated"]))
        elif pick == "pause_collection":  # Stripe keeps the status, only pause_collection changes
            behavior = rng.choice(["keep_as_draft", "mark_uncollectible", "void"])
            steps.append(
                (
                    {"pause_collection": {"behavior": behavior, "resumes_at": rng.choice([None, period_end])}},
                    ["customer.subscription.updated"],
                )
            )
        elif pick == "resume_collection":
            steps.append(({"pause_collection": None}, ["customer.subscription.updated"]))
        elif pick == "pause":
            steps.append(({"status": "paused"}, ["customer.subscription.paused"]))
        else:
            steps.append(({"status": "unpaid"}, ["customer.subscription.updated"]))
    if rng.random() < 0.3:
        steps.append(({"status": "canceled"}, ["customer.subscription.deleted"]))
    return steps


def _add_prices(fake):
    fake.add_price("price_quarterly", "month", 7500, interval_count=3)
    fake.add_price("price_weekly_lookup", "week", 500, lookup_key="weekly-plan")


def _event_for(fake, kind, sub_id, api_version, session):
    current = fake.subscription(sub_id, api_version)
    if kind == "checkout.session.completed":
        return event(kind, session, api_version)
    if kind.startswith("invoice."):
        return event(kind, invoice(current, api_version, paid=kind == "invoice.paid"), api_version)
    return event(kind, current, api_version)


SHARED_WHSEC = "whsec_shared_" + "s" * 24


@pytest.mark.gen_test(timeout=180)
async def test_random_delivery_orders_end_in_stripes_state(read, fake_stripe, hooked, deliver, make_project):
    """Deliveries late, early (subscription before checkout), repeated and concurrent, with Stripe changing
    in between: every seed ends with GET /api/subscription equal to Stripe's final state.

    A second project shares the Stripe account (the deployment key) and, as Stripe does, receives every
    event at its own endpoint: it ignores each one and ends with nothing."""
    import random

    other = make_project(name="Shared", stripe_webhook_secret=SHARED_WHSEC)
    to_other = dict(path=f"/api/webhook/{other.project.public_id}", secret=SHARED_WHSEC)

    def both(evt):
        return [deliver(evt), deliver(evt, **to_other)]

    deletions = 0
    _add_prices(fake_stripe)
    for seed in SEEDS:
        rng = random.Random(seed)
        api_version = rng.choice(BOTH_SHAPES)
        fake_stripe.api_version = api_version
        user = f"prop-{seed}"
        session, sub = new_subscription(
            fake_stripe, user, project_id=hooked.project.public_id, status=rng.choice(["active", "trialing"])
        )
        period_end = fake_stripe.subscription(sub["id"], NEW_API)["items"]["data"][0]["current_period_end"]
        pending = [
            _event_for(fake_stripe, kind, sub["id"], api_version, session)
            for kind in ("checkout.session.completed", "customer.subscription.created", "invoice.paid")
        ]
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
            responses = await asyncio.gather(*(call for e in batch for call in both(e)))
            assert all(r.code == 200 for r in responses), [r.body for r in responses]
            delivered += [e for e in batch if e not in delivered]
        deleted = rng.random() < 0.5
        if deleted:  # deleted in the Dashboard; events from just before arrive after its customer.deleted, or not
            final = [
                _event_for(fake_stripe, kind, sub["id"], api_version, session)
                for kind in rng.sample(
                    ["checkout.session.completed", "customer.subscription.updated", "invoice.paid"], 2
                )
            ]
            canceled, _ = fake_stripe.delete_customer(sub["customer"])
            final += [event("customer.subscription.deleted", c, api_version) for c in canceled]
            final.append(
                event("customer.deleted", customer_object(sub["customer"], f"{user}@example.test"), api_version)
            )
            rng.shuffle(final)
            while final:
                size = rng.choice([1, 2])  # concurrent, too
                batch, final = final[:size], final[size:]
                responses = await asyncio.gather(*(call for e in batch for call in both(e)))
                assert all(r.code == 200 for r in responses), [r.body for r in responses]
                delivered += [e for e in batch if e not in delivered]
        found = await read(hooked, user)
        if deleted:
            deletions += 1
            assert found["stripe_customer_id"] is None, seed
            found = dict(found, stripe_customer_id=sub["customer"])
        assert_matches_stripe(found, fake_stripe, sub["id"])
        ids = {e["id"] for e in delivered}
        rows = [r for r in events_of(hooked.project) if r.stripe_event_id in ids]
        assert len(rows) == len(delivered), seed
        assert {r.outcome for r in rows} == {"processed"}, seed
        assert await read(other, user) is None
        ignored = [r for r in events_of(other.project) if r.stripe_event_id in ids]
        assert len(ignored) == len(delivered) and {r.outcome for r in ignored} == {"ignored"}, seed
        assert all("another project" in r.reason or "not linked" in r.reason for r in ignored), seed
    assert 8 <= deletions < len(SEEDS)  # the seeds do cover customers deleted in Stripe
    with db.block():
        assert not Customer.select().where(Customer.project == other.project).exists()
        assert not Subscription.select().where(Subscription.project == other.project).exists()


@pytest.mark.gen_test(timeout=60)
async def test_without_a_stripe_key_an_older_snapshot_never_overwrites_a_newer_one(
    read, fake_stripe, hooked, deliver, app
):
    """Payload-only mode (no Stripe key to re-fetch with): ordering by the event's `created`."""
    import dataclasses
    import random

    app.settings["config"] = dataclasses.replace(app.settings["config"], stripe_secret_key=None)
    _add_prices(fake_stripe)
    for seed in range(10):
        rng = random.Random(1000 + seed)
        api_version = rng.choice(BOTH_SHAPES)
        user = f"payload-{seed}"
        session, sub = new_subscription(fake_stripe, user, project_id=hooked.project.public_id)
        created = int(time.time()) - 1000
        events = [
            event(
                "customer.subscription.created",
                fake_stripe.subscription(sub["id"], api_version),
                api_version,
                created=created,
            )
        ]
        for step, (changes, _) in enumerate(_mutations(rng, created + 86400 * 30), start=1):
            fake_stripe.set_subscription(sub["id"], **changes)
            events.append(
                event(
                    "customer.subscription.updated",
                    fake_stripe.subscription(sub["id"], api_version),
                    api_version,
                    created=created + 10 * step,
                )
            )
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

    session, sub = new_subscription(fake_stripe, "twoproc", project_id=hooked.project.public_id)
    events = [
        event("checkout.session.completed", session),
        event("customer.subscription.created", sub),
        event("invoice.paid", invoice(sub)),
    ]
    deliveries = [events[0]] * 4 + events[1:] * 2
    config, box = app.settings["config"], app.settings["secret_box"]
    start = threading.Barrier(len(deliveries))

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
async def test_a_flood_of_forgeries_is_answered_but_recorded_only_up_to_a_cap(
    fake_stripe, hooked, deliver, monkeypatch
):
    monkeypatch.setattr(webhooks, "INVALID_RECORDS_PER_ADDRESS", RateLimit(3, 60))
    for _ in range(6):
        resp = await deliver('{"id": "evt_x"}', secret="whsec_forged")
        assert resp.code == 400 and body_of(resp)["error"]["code"] == "invalid_signature"
    assert len(events_of(hooked.project, outcome="invalid_signature")) == 3


@pytest.mark.gen_test(timeout=30)
async def test_forgeries_from_rotating_addresses_are_capped_per_project(
    app, fake_stripe, hooked, make_project, deliver, monkeypatch
):
    """Security review L4/L10: a fresh address per forgery (here, behind a trusted proxy) gets no fresh budget."""
    config = app.settings["config"]
    app.settings["config"] = dataclasses.replace(config, trust_proxy=True)
    monkeypatch.setattr(webhooks, "INVALID_RECORDS_PER_PROJECT", RateLimit(5, 3600))
    for i in range(12):
        via = {"X-Forwarded-For": f"198.51.100.{i}" if i % 2 else f"2001:db8:{i}::1", "X-Forwarded-Proto": "https"}
        resp = await deliver('{"id": "evt_x"}', secret="whsec_forged", headers=via)
        assert resp.code == 400 and body_of(resp)["error"]["code"] == "invalid_signature"
    rows = events_of(hooked.project, outcome="invalid_signature")
    assert len(rows) == 5 and {r.remote_ip for r in rows} == {
        "2001:db8::1",
        "198.51.100.1",
        "2001:db8:2::1",
        "198.51.100.3",
        "2001:db8:4::1",
    }
    # Another project's budget is its own.
    other = make_project(name="Other", stripe_webhook_secret="whsec_other")
    resp = await deliver('{"id": "evt_x"}', secret="whsec_forged", path=f"/api/webhook/{other.project.public_id}")
    assert resp.code == 400
    assert len(events_of(other.project, outcome="invalid_signature")) == 1
