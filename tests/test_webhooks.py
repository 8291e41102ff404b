"""Stripe webhooks through signed deliveries to the running app, with the fake Stripe behind it."""

import asyncio
import json
import time

import pytest

from pulse import db, subscriptions, webhooks
from pulse.models import Customer, Subscription, WebhookEvent
from tests.stripe_events import NEW_API, OLD_API, body_of_event, customer_object, event, invoice, new_subscription, sign
from tests.support import body_of
from tests.webhook_support import (
    BOTH_SHAPES,
    DEPLOY_WHSEC,
    WHSEC,
    assert_matches_stripe,
    events_of,
    iso,
    webhook_overrides,
)

config_overrides = pytest.fixture(lambda fake_stripe: webhook_overrides(fake_stripe))


# ---------------------------------------------------------------- event types, both payload shapes


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("api_version", BOTH_SHAPES)
async def test_checkout_then_lifecycle_events_in_either_payload_shape(read, fake_stripe, hooked, deliver, api_version):
    fake_stripe.api_version = api_version
    session, sub = new_subscription(
        fake_stripe, "user-1", project_id=hooked.project.public_id, email="one@example.test"
    )
    if api_version == OLD_API:
        assert "current_period_end" in sub and "current_period_end" not in sub["items"]["data"][0]
    else:
        assert "current_period_end" not in sub and "current_period_end" in sub["items"]["data"][0]

    resp = await deliver(event("checkout.session.completed", session, api_version))
    assert resp.code == 200, resp.body
    assert body_of(resp) == {"received": True, "outcome": "processed"}
    found = await read(hooked, "user-1")
    assert_matches_stripe(found, fake_stripe, sub["id"])
    assert found["status"] == "active" and found["email"] == "one@example.test"
    assert found["plan_slug"] == "pro" and found["interval"] == "monthly"

    # Payment fails: Stripe moves the subscription to past_due and sends invoice.payment_failed.
    current = fake_stripe.set_subscription(sub["id"], status="past_due")
    resp = await deliver(event("invoice.payment_failed", invoice(current, api_version, paid=False), api_version))
    assert body_of(resp)["outcome"] == "processed"
    assert (await read(hooked, "user-1"))["status"] == "past_due"

    current = fake_stripe.set_subscription(sub["id"], status="active")
    resp = await deliver(event("invoice.paid", invoice(current, api_version), api_version))
    assert (await read(hooked, "user-1"))["status"] == "active"

    current = fake_stripe.set_subscription(sub["id"], status="paused", pause_collection={"behavior": "void"})
    await deliver(event("customer.subscription.paused", current, api_version))
    assert (await read(hooked, "user-1"))["status"] == "paused"
    assert (await read(hooked, "user-1"))["has_access"] is False

    current = fake_stripe.set_subscription(sub["id"], status="active", pause_collection=None)
    await deliver(event("customer.subscription.resumed", current, api_version))
    assert (await read(hooked, "user-1"))["status"] == "active"

    # Classic portal cancellation: cancel_at_period_end.
    current = fake_stripe.set_subscription(
        sub["id"],
        cancel_at_period_end=True,
        cancel_at=current["items"]["data"][0].get("current_period_end") or current["current_period_end"],
    )
    await deliver(event("customer.subscription.updated", current, api_version))
    found = await read(hooked, "user-1")
    assert found["status"] == "cancelling" and found["has_access"] is True
    assert_matches_stripe(found, fake_stripe, sub["id"])

    cus = fake_stripe.dispatch("POST", f"customers/{sub['customer']}", {"email": "new@example.test"})
    resp = await deliver(event("customer.updated", cus, api_version))
    assert body_of(resp)["outcome"] == "processed"
    assert (await read(hooked, "user-1"))["email"] == "new@example.test"

    current = fake_stripe.set_subscription(sub["id"], status="canceled", cancel_at_period_end=False)
    await deliver(event("customer.subscription.deleted", current, api_version))
    found = await read(hooked, "user-1")
    assert found["status"] == "cancelled" and found["has_access"] is False
    assert_matches_stripe(found, fake_stripe, sub["id"])

    resp = await deliver(event("charge.refunded", {"id": "ch_1", "object": "charge"}, api_version))
    assert body_of(resp) == {"received": True, "outcome": "ignored"}
    outcomes = [(e.type, e.outcome) for e in events_of(hooked.project)]
    assert outcomes[-1] == ("charge.refunded", "ignored")
    assert all(outcome == "processed" for _, outcome in outcomes[:-1]), outcomes
    assert {e.api_version for e in events_of(hooked.project)} == {api_version}


STATUS_CASES = [
    # (stripe status, cancel_at_period_end, cancel_at set, our status, has_access)
    ("active", False, False, "active", True),
    ("trialing", False, False, "trialing", True),
    ("active", True, True, "cancelling", True),
    ("trialing", True, True, "cancelling", True),
    ("active", False, True, "cancelling", True),  # flexible billing mode / portal: cancel_at only
    ("trialing", False, True, "cancelling", True),
    ("past_due", False, False, "past_due", True),
    ("unpaid", False, False, "unpaid", False),
    ("canceled", False, False, "cancelled", False),
    ("incomplete_expired", False, False, "cancelled", False),
    ("incomplete", False, False, "incomplete", False),
    ("paused", False, False, "paused", False),
]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("api_version", BOTH_SHAPES)
async def test_every_status_mapping_in_either_payload_shape(read, fake_stripe, hooked, deliver, api_version):
    fake_stripe.api_version = api_version
    for n, (stripe_status, at_period_end, cancel_at, ours, access) in enumerate(STATUS_CASES):
        user = f"status-{n}"
        _, sub = new_subscription(fake_stripe, user, project_id=hooked.project.public_id)
        period_end = fake_stripe.subscription(sub["id"], NEW_API)["items"]["data"][0]["current_period_end"]
        changes = {
            "status": stripe_status,
            "cancel_at_period_end": at_period_end,
            "cancel_at": period_end - 86400 if cancel_at else None,
        }
        if stripe_status == "active" and cancel_at and not at_period_end:
            changes["billing_mode"] = {"type": "flexible"}
        current = fake_stripe.set_subscription(sub["id"], **changes)
        resp = await deliver(event("customer.subscription.updated", current, api_version))
        assert resp.code == 200, resp.body
        found = await read(hooked, user)
        assert (found["status"], found["has_access"]) == (ours, access), (stripe_status, at_period_end, cancel_at)
        assert found["current_period_end"] == iso(period_end)
        assert found["cancel_at"] == (iso(period_end - 86400) if cancel_at else None)
        assert_matches_stripe(found, fake_stripe, sub["id"])


@pytest.mark.gen_test(timeout=30)
async def test_subscription_event_before_checkout_creates_customer_from_metadata(read, fake_stripe, hooked, deliver):
    session, sub = new_subscription(
        fake_stripe, "early-bird", project_id=hooked.project.public_id, status="trialing", trial_days=7
    )
    resp = await deliver(event("customer.subscription.created", sub))
    assert body_of(resp)["outcome"] == "processed"
    found = await read(hooked, "early-bird")
    assert found["status"] == "trialing" and found["stripe_customer_id"] == sub["customer"]
    assert found["trial_end"] == iso(sub["trial_end"])
    # The checkout event arriving late links the same customer and fills its email; still one row each.
    await deliver(event("checkout.session.completed", session))
    with db.block():
        customers = list(Customer.select().where(Customer.project == hooked.project))
        assert len(customers) == 1 and customers[0].email == "early-bird@example.test"
        assert Subscription.select().where(Subscription.project == hooked.project).count() == 1
    assert_matches_stripe(await read(hooked, "early-bird"), fake_stripe, sub["id"])


@pytest.mark.gen_test(timeout=30)
async def test_events_about_things_we_do_not_manage_are_ignored(read, fake_stripe, hooked, deliver):
    session, sub = new_subscription(fake_stripe, "payer", project_id=hooked.project.public_id)
    one_off = fake_stripe.dispatch(
        "POST",
        "checkout/sessions",
        {
            "mode": "payment",
            "customer": sub["customer"],
            "success_url": "https://app.example.test/ok",
            "metadata": {"pulse_project_id": hooked.project.public_id},
        },
    )
    assert body_of(await deliver(event("checkout.session.completed", one_off))) == {
        "received": True,
        "outcome": "ignored",
    }
    # A subscription created outside PaymentPulse: no metadata, a Stripe customer we never saw.
    stranger = dict(sub, id="sub_stranger", customer="cus_stranger", metadata={})
    assert body_of(await deliver(event("customer.subscription.updated", stranger)))["outcome"] == "ignored"
    no_sub = invoice(sub)
    no_sub["parent"] = None
    assert body_of(await deliver(event("invoice.paid", no_sub)))["outcome"] == "ignored"
    assert await read(hooked, "payer") is None
    with db.block():
        assert Subscription.select().count() == 0


# ---------------------------------------------------------------- duplicates and concurrency


@pytest.mark.gen_test(timeout=30)
async def test_duplicate_delivery_has_no_effect(read, fake_stripe, hooked, deliver):
    session, sub = new_subscription(fake_stripe, "dup", project_id=hooked.project.public_id)
    evt = event("checkout.session.completed", session)
    first = await deliver(evt)
    assert body_of(first) == {"received": True, "outcome": "processed"}
    fake_stripe.set_subscription(sub["id"], status="past_due")
    before = len(fake_stripe.calls("GET", "/v1/subscriptions"))
    again = await deliver(evt)
    assert again.code == 200 and body_of(again) == {"received": True, "duplicate": True}
    # Not applied again: no Stripe read, state untouched, one inbox row.
    assert len(fake_stripe.calls("GET", "/v1/subscriptions")) == before
    assert (await read(hooked, "dup"))["status"] == "active"
    assert len(events_of(hooked.project, stripe_event_id=evt["id"])) == 1


@pytest.mark.gen_test(timeout=60)
async def test_twenty_simultaneous_deliveries_apply_once(read, fake_stripe, hooked, deliver):
    session, sub = new_subscription(fake_stripe, "burst", project_id=hooked.project.public_id)
    evt = event("checkout.session.completed", session)
    fake_stripe.latency = 0.05  # every delivery is in flight at the same time
    responses = await asyncio.gather(*(deliver(evt) for _ in range(20)))
    assert [r.code for r in responses] == [200] * 20
    bodies = [body_of(r) for r in responses]
    assert bodies.count({"received": True, "outcome": "processed"}) == 1
    assert bodies.count({"received": True, "duplicate": True}) == 19
    rows = events_of(hooked.project, stripe_event_id=evt["id"])
    assert len(rows) == 1 and rows[0].outcome == "processed" and rows[0].attempts == 1
    with db.block():
        assert Customer.select().where(Customer.project == hooked.project).count() == 1
        assert Subscription.select().where(Subscription.project == hooked.project).count() == 1
    assert_matches_stripe(await read(hooked, "burst"), fake_stripe, sub["id"])


# ---------------------------------------------------------------- failures and retries


@pytest.mark.gen_test(timeout=30)
async def test_stripe_failure_is_recorded_and_the_retry_applies_it(read, fake_stripe, hooked, deliver):
    session, sub = new_subscription(fake_stripe, "flaky", project_id=hooked.project.public_id)
    evt = event("checkout.session.completed", session)
    fake_stripe.fail_next(1, status=500, path="/v1/subscriptions")
    resp = await deliver(evt)
    assert resp.code == 500
    assert body_of(resp)["error"]["code"] == "webhook_failed"
    [row] = events_of(hooked.project, stripe_event_id=evt["id"])
    assert row.outcome == "failed" and row.attempts == 1 and "500" in row.error
    assert "sk_" not in row.error
    assert await read(hooked, "flaky") is None

    retry = await deliver(evt)  # Stripe's retry: not a duplicate
    assert body_of(retry) == {"received": True, "outcome": "processed"}
    [row] = events_of(hooked.project, stripe_event_id=evt["id"])
    assert row.outcome == "processed" and row.attempts == 2 and row.error is None
    assert_matches_stripe(await read(hooked, "flaky"), fake_stripe, sub["id"])
    assert body_of(await deliver(evt)) == {"received": True, "duplicate": True}


@pytest.mark.gen_test(timeout=30)
async def test_failure_while_applying_rolls_back_and_reapply_recovers(
    read, fake_stripe, hooked, deliver, monkeypatch, app
):
    session, sub = new_subscription(fake_stripe, "broken", project_id=hooked.project.public_id)
    evt = event("customer.subscription.created", sub)

    def explode(*args, **kwargs):
        raise RuntimeError("secret-ish detail that must not be stored")

    with monkeypatch.context() as patch:
        patch.setattr(subscriptions, "upsert_subscription", explode)
        resp = await deliver(evt)
        assert resp.code == 500 and body_of(resp)["error"]["code"] == "webhook_failed"
        resp = await deliver(evt)
        assert resp.code == 500
    [row] = events_of(hooked.project, stripe_event_id=evt["id"])
    assert row.outcome == "failed" and row.attempts == 2
    assert row.error == "RuntimeError while applying the event"
    assert await read(hooked, "broken") is None  # the apply transaction rolled back
    with db.block():
        assert Customer.select().where(Customer.project == hooked.project).count() == 0

    outcome = await webhooks.reapply(row.id, config=app.settings["config"], box=app.settings["secret_box"])
    assert outcome == "processed"
    assert_matches_stripe(await read(hooked, "broken"), fake_stripe, sub["id"])
    assert await webhooks.reapply(row.id, config=app.settings["config"], box=app.settings["secret_box"]) == "processed"
    assert body_of(await deliver(evt)) == {"received": True, "duplicate": True}


# ---------------------------------------------------------------- signatures and bad input


@pytest.mark.gen_test(timeout=30)
async def test_invalid_signatures_are_rejected_recorded_and_not_applied(read, fake_stripe, hooked, deliver):
    session, _ = new_subscription(fake_stripe, "forged", project_id=hooked.project.public_id)
    evt = event("checkout.session.completed", session)
    body = body_of_event(evt)
    cases = {
        "missing": dict(headers={"Stripe-Signature": None}),
        "wrong secret": dict(secret="whsec_wrong"),
        "old timestamp": dict(timestamp=int(time.time()) - 301),
        "tampered body": dict(signature=sign(body.replace("forged", "forgeD"), WHSEC)),
        "garbage header": dict(signature="v0=abc"),
    }
    for name, kwargs in cases.items():
        resp = await deliver(body, **kwargs)
        assert resp.code == 400, name
        assert body_of(resp)["error"]["code"] == "invalid_signature", name
    rows = events_of(hooked.project, outcome="invalid_signature")
    assert len(rows) == len(cases)
    assert all(r.remote_ip == "127.0.0.1" and r.received_at and r.error for r in rows)
    assert [r.error for r in rows][:3] == [
        "missing Stripe-Signature header",
        "no matching v1 signature",
        "timestamp outside the tolerance zone",
    ]
    assert await read(hooked, "forged") is None
    assert not events_of(hooked.project, stripe_event_id=evt["id"])
    # A rolled secret: Stripe sends one v1 per active secret, and any may match.
    now = int(time.time())
    rolled = sign(body, "whsec_old", now) + "," + sign(body, WHSEC, now).split(",")[1]
    assert (await deliver(body, signature=rolled)).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_signed_but_malformed_payloads_are_400_not_500(fake_stripe, hooked, deliver):
    bodies = [
        "not json",
        "[]",
        json.dumps({"type": "x", "data": {"object": {}}}),
        json.dumps({"id": "evt_1", "data": {"object": {}}}),
        json.dumps({"id": "evt_1", "type": "x"}),
        json.dumps({"id": "evt_1", "type": "x", "data": {"object": "nope"}}),
        json.dumps({"id": "evt_1", "type": "x", "created": "yesterday", "data": {"object": {}}}),
        "\ufeff" + json.dumps({"id": "evt_1", "type": "x", "data": []}),
    ]
    for body in bodies:
        resp = await deliver(body)
        assert resp.code == 400, body
        assert body_of(resp)["error"]["code"] == "invalid_payload", body


@pytest.mark.gen_test(timeout=30)
async def test_unknown_project_and_missing_secrets(fake_stripe, make_project, deliver, http_client, base_url):
    resp = await deliver("{}", path="/api/webhook/proj_doesnotexist")
    assert resp.code == 404 and body_of(resp)["error"]["code"] == "not_found"
    bare = make_project(name="Bare")
    resp = await deliver("{}", path=f"/api/webhook/{bare.project.public_id}")
    assert resp.code == 503 and body_of(resp)["error"]["code"] == "webhook_not_configured"


@pytest.mark.gen_test(timeout=30)
async def test_a_new_signing_secret_counts_for_the_next_delivery_despite_the_project_cache(
    fake_stripe, hooked, deliver, box
):
    from pulse import projects

    unhandled = event("customer.created", customer_object("cus_rotated", "r@example.test"))
    assert (await deliver(unhandled)).code == 200  # the project is now cached
    new_secret = "whsec_rotated_" + "c" * 24
    with db.block():
        projects.set_stripe(hooked.project, box, webhook_secret=new_secret)
    assert (
        await deliver(event("customer.created", customer_object("cus_rotated", "r@example.test")))
    ).code == 400  # the old one
    assert (
        await deliver(event("customer.created", customer_object("cus_rotated", "r@example.test")), secret=new_secret)
    ).code == 200


# ---------------------------------------------------------------- the deployment-wide endpoint


@pytest.mark.gen_test(timeout=30)
async def test_deployment_endpoint_routes_by_metadata_then_customer_else_ignores(
    read, fake_stripe, hooked, make_project, deliver
):
    other = make_project(name="Other")
    wide = dict(path="/api/webhook", secret=DEPLOY_WHSEC)
    # 1. pulse_project_id metadata on the session.
    session, sub = new_subscription(fake_stripe, "routed", project_id=other.project.public_id)
    resp = await deliver(event("checkout.session.completed", session), **wide)
    assert body_of(resp) == {"received": True, "outcome": "processed"}
    assert_matches_stripe(await read(other, "routed"), fake_stripe, sub["id"])
    assert await read(hooked, "routed") is None
    # 2. An invoice whose only project hint is its parent's subscription metadata (new shape).
    current = fake_stripe.set_subscription(sub["id"], status="past_due")
    inv = invoice(current, NEW_API, paid=False)
    inv["metadata"] = {}
    resp = await deliver(event("invoice.payment_failed", inv), **wide)
    assert (await read(other, "routed"))["status"] == "past_due"
    # 3. No metadata at all: by the Stripe customer id we know.
    cus = fake_stripe.dispatch("POST", f"customers/{sub['customer']}", {"email": "moved@example.test"})
    cus = customer_object(cus["id"], cus["email"])
    resp = await deliver(event("customer.updated", cus), **wide)
    assert body_of(resp)["outcome"] == "processed"
    assert (await read(other, "routed"))["email"] == "moved@example.test"
    [row] = events_of(other.project, type="customer.updated")
    # 4. Belongs to nobody: recorded as ignored without a project, answered 200.
    stranger = customer_object("cus_stranger", "who@example.test")
    resp = await deliver(event("customer.updated", stranger), **wide)
    assert resp.code == 200 and body_of(resp) == {"received": True, "outcome": "ignored"}
    with db.block():
        orphan = WebhookEvent.get(WebhookEvent.stripe_customer_id == "cus_stranger")
    assert orphan.project_id is None and orphan.outcome == "ignored"
    # The project's secret does not open the deployment endpoint, nor the reverse.
    assert (await deliver(event("customer.updated", stranger), path="/api/webhook")).code == 400
    assert (await deliver(event("customer.updated", stranger), secret=DEPLOY_WHSEC)).code == 400
