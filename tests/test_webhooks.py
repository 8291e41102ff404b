"""Stripe webhooks through signed deliveries to the running app, with the fake Stripe behind it."""

import asyncio
import json
import time

import pytest

from pulse import db, webhooks
from pulse.models import Customer, Subscription, WebhookEvent
from tests.conftest import body_of
from tests.stripe_events import NEW_API, OLD_API, body_of_event, customer_object, event, invoice, \
    new_subscription, sign

WHSEC = "whsec_project_" + "a" * 24
DEPLOY_WHSEC = "whsec_deploy_" + "b" * 24
BOTH_SHAPES = [OLD_API, NEW_API]


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides(stripe_webhook_secret=DEPLOY_WHSEC, stripe_max_retries=0)


@pytest.fixture
def hooked(make_project):
    """A project with a webhook signing secret (Stripe key: the deployment's, i.e. the fake's)."""
    return make_project(name="Hooked", stripe_webhook_secret=WHSEC)


@pytest.fixture
def deliver(http_client, base_url, hooked):
    """deliver(event_or_body, path=None, secret=WHSEC, timestamp=None, headers=None) -> response."""

    async def send(evt, path=None, secret=WHSEC, timestamp=None, headers=None, signature=None):
        body = evt if isinstance(evt, (str, bytes)) else body_of_event(evt)
        all_headers = {"Content-Type": "application/json",
                       "Stripe-Signature": signature or sign(body, secret, timestamp)}
        all_headers.update(headers or {})
        all_headers = {k: v for k, v in all_headers.items() if v is not None}
        return await http_client.fetch(base_url + (path or f"/api/webhook/{hooked.project.public_id}"),
                                       method="POST", body=body, headers=all_headers, raise_error=False)

    return send


@pytest.fixture
def read(http_client, base_url):
    """read(new_project, external_user_id) -> GET /api/subscription's body, or None on 404."""

    async def get(new_project, external_user_id):
        resp = await http_client.fetch(f"{base_url}/api/subscription?external_user_id={external_user_id}",
                                       headers={"X-API-Key": new_project.api_key.api_key}, raise_error=False)
        if resp.code == 404:
            assert body_of(resp)["error"]["code"] == "not_found"
            return None
        assert resp.code == 200, resp.body
        return body_of(resp)

    return get


def events_of(project=None, **where):
    with db.block():
        query = WebhookEvent.select().order_by(WebhookEvent.id)
        if project is not None:
            query = query.where(WebhookEvent.project == project)
        for name, value in where.items():
            query = query.where(getattr(WebhookEvent, name) == value)
        return list(query)


def iso(ts):
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


STATUS_WORDS = {"active": "active", "trialing": "trialing", "past_due": "past_due", "unpaid": "unpaid",
                "canceled": "cancelled", "incomplete_expired": "cancelled", "incomplete": "incomplete",
                "paused": "paused"}


def truth(fake, sub_id):
    """Stripe's current subscription as our API must show it (computed here, independently of pulse)."""
    sub = fake.subscription(sub_id, NEW_API)
    item = sub["items"]["data"][0]
    status = STATUS_WORDS[sub["status"]]
    if sub["status"] in ("active", "trialing") and (sub["cancel_at_period_end"] or sub["cancel_at"]):
        status = "cancelling"
    return {"status": status, "has_access": status in ("active", "trialing", "cancelling", "past_due"),
            "stripe_price_id": item["price"]["id"],
            "interval": {"month": "monthly", "year": "yearly"}[item["price"]["recurring"]["interval"]],
            "current_period_end": iso(item["current_period_end"]), "cancel_at": iso(sub["cancel_at"]),
            "trial_end": iso(sub["trial_end"]), "plan_slug": sub["metadata"].get("plan_slug"),
            "stripe_subscription_id": sub_id, "stripe_customer_id": sub["customer"]}


def assert_matches_stripe(found, fake, sub_id):
    assert found is not None
    expected = truth(fake, sub_id)
    assert {k: found[k] for k in expected} == expected


# ---------------------------------------------------------------- event types, both payload shapes


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("api_version", BOTH_SHAPES)
async def test_checkout_then_lifecycle_events_in_either_payload_shape(read, fake_stripe, hooked, deliver, api_version):
    fake_stripe.api_version = api_version
    session, sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id,
                                    email="one@example.test")
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
    current = fake_stripe.set_subscription(sub["id"], cancel_at_period_end=True,
                                           cancel_at=current["items"]["data"][0].get("current_period_end")
                                           or current["current_period_end"])
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
        _, sub = new_subscription(fake_stripe, user)
        period_end = fake_stripe.subscription(sub["id"], NEW_API)["items"]["data"][0]["current_period_end"]
        changes = {"status": stripe_status, "cancel_at_period_end": at_period_end,
                   "cancel_at": period_end - 86400 if cancel_at else None}
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
    session, sub = new_subscription(fake_stripe, "early-bird", status="trialing", trial_days=7)
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
    session, sub = new_subscription(fake_stripe, "payer")
    one_off = dict(session, mode="payment", subscription=None)
    assert body_of(await deliver(event("checkout.session.completed", one_off))) == {"received": True,
                                                                                  "outcome": "ignored"}
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
    session, sub = new_subscription(fake_stripe, "dup")
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
    session, sub = new_subscription(fake_stripe, "burst")
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
    session, sub = new_subscription(fake_stripe, "flaky")
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
async def test_failure_while_applying_rolls_back_and_reapply_recovers(read, fake_stripe, hooked, deliver, monkeypatch,
                                                                       app):
    session, sub = new_subscription(fake_stripe, "broken")
    evt = event("customer.subscription.created", sub)

    def explode(*args, **kwargs):
        raise RuntimeError("secret-ish detail that must not be stored")

    with monkeypatch.context() as patch:
        patch.setattr(webhooks.subs, "upsert_subscription", explode)
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
    assert await webhooks.reapply(row.id, config=app.settings["config"], box=app.settings["secret_box"]) \
        == "processed"
    assert body_of(await deliver(evt)) == {"received": True, "duplicate": True}


# ---------------------------------------------------------------- signatures and bad input


@pytest.mark.gen_test(timeout=30)
async def test_invalid_signatures_are_rejected_recorded_and_not_applied(read, fake_stripe, hooked, deliver,
                                                                       monkeypatch):
    monkeypatch.setattr(webhooks, "_invalid_counts", {})  # other tests' forgeries don't count
    session, _ = new_subscription(fake_stripe, "forged")
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
    assert [r.error for r in rows][:3] == ["missing Stripe-Signature header", "no matching v1 signature",
                                          "timestamp outside the tolerance zone"]
    assert await read(hooked, "forged") is None
    assert not events_of(hooked.project, stripe_event_id=evt["id"])
    # A rolled secret: Stripe sends one v1 per active secret, and any may match.
    now = int(time.time())
    rolled = sign(body, "whsec_old", now) + "," + sign(body, WHSEC, now).split(",")[1]
    assert (await deliver(body, signature=rolled)).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_signed_but_malformed_payloads_are_400_not_500(fake_stripe, hooked, deliver):
    bodies = ["not json", "[]", json.dumps({"type": "x", "data": {"object": {}}}),
              json.dumps({"id": "evt_1", "data": {"object": {}}}), json.dumps({"id": "evt_1", "type": "x"}),
              json.dumps({"id": "evt_1", "type": "x", "data": {"object": "nope"}}),
              json.dumps({"id": "evt_1", "type": "x", "created": "yesterday", "data": {"object": {}}}),
              "\ufeff" + json.dumps({"id": "evt_1", "type": "x", "data": []})]
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


# ---------------------------------------------------------------- the deployment-wide endpoint


@pytest.mark.gen_test(timeout=30)
async def test_deployment_endpoint_routes_by_metadata_then_customer_else_ignores(read, fake_stripe, hooked, make_project,
                                                                                 deliver):
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
    monkeypatch.setattr(webhooks, "INVALID_RECORDS_PER_MINUTE", 3)
    monkeypatch.setattr(webhooks, "_invalid_counts", {})
    for _ in range(6):
        resp = await deliver('{"id": "evt_x"}', secret="whsec_forged")
        assert resp.code == 400 and body_of(resp)["error"]["code"] == "invalid_signature"
    assert len(events_of(hooked.project, outcome="invalid_signature")) == 3
