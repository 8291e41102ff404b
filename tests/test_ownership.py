"""Event ownership: projects sharing one Stripe account each apply only their own events (issue 10.1, 11.3)."""

import secrets

import pytest

from pulse import db, events, ownership
from pulse import subscriptions as subs
from pulse.models import Customer, CustomerFeature, StripeCustomerHistory, Subscription
from tests.stripe_events import customer_object, event, invoice, new_subscription
from tests.support import body_of
from tests.webhook_support import DEPLOY_WHSEC, assert_matches_stripe, events_of, reason_of, webhook_overrides

config_overrides = pytest.fixture(lambda fake_stripe: webhook_overrides(fake_stripe))

BRAVO_WHSEC = "whsec_bravo_" + "e" * 24


@pytest.fixture
def bravo(make_project):
    """A second project on the same Stripe account (the deployment key), with its own endpoint and secret."""
    return make_project(name="Bravo", stripe_webhook_secret=BRAVO_WHSEC)


def state_of(project):
    """Everything a webhook may change in a project, comparable before and after."""
    with db.block():
        customers = sorted(
            Customer.select(Customer.external_user_id, Customer.email, Customer.stripe_customer_id)
            .where(Customer.project == project)
            .tuples()
        )
        subscriptions = sorted(
            Subscription.select(
                Subscription.stripe_subscription_id,
                Subscription.status,
                Subscription.customer,
                Subscription.snapshot_at,
            )
            .where(Subscription.project == project)
            .tuples()
        )
        history = sorted(
            StripeCustomerHistory.select(StripeCustomerHistory.stripe_customer_id)
            .where(StripeCustomerHistory.project == project)
            .tuples()
        )
        features = sorted(
            CustomerFeature.select(CustomerFeature.customer, CustomerFeature.lookup_key)
            .where(CustomerFeature.project == project)
            .tuples()
        )
    return customers, subscriptions, history + features  # features: Stripe Entitlements (issue 16)


# ---------------------------------------------------------------- the rule itself


def test_the_ownership_rule(make_project):
    alpha, bravo = make_project(name="Alpha").project, make_project(name="Bravo").project
    with db.block():
        linked = Customer.create(project=alpha, external_user_id="u1", stripe_customer_id="cus_alpha")
        gone = Customer.create(project=bravo, external_user_id="u2")
        StripeCustomerHistory.create(
            project=bravo, customer=gone, stripe_customer_id="cus_deleted", reason=subs.DELETED_IN_STRIPE
        )
        mine, theirs = {"metadata": {"pulse_project_id": alpha.public_id}}, {"metadata": {"pulse_project_id": "x"}}
        bare = {"metadata": {}}
        # Metadata decides, whoever links the customer; the most specific object's metadata first.
        assert ownership.not_owned(alpha, [mine], "cus_unknown") is None
        assert "another project" in ownership.not_owned(bravo, [mine], "cus_alpha")
        assert "another project" in ownership.not_owned(alpha, [theirs, mine], "cus_alpha")
        assert ownership.not_owned(alpha, [None, bare, mine], "cus_alpha") is None
        # Invoices carry it under (parent.)subscription_details.
        assert ownership.not_owned(alpha, [{"subscription_details": mine}], None) is None
        # No metadata: the customer must be linked to this project (now, or until Stripe deleted it).
        assert ownership.not_owned(alpha, [bare], "cus_alpha") is None
        assert "not linked" in ownership.not_owned(bravo, [bare], "cus_alpha")
        assert ownership.not_owned(bravo, [bare], "cus_deleted") is None
        assert "no Stripe customer" in ownership.not_owned(alpha, [bare], None)
        assert linked.stripe_customer_id == "cus_alpha"
    assert ownership.mode_mismatch({"livemode": True}, "sk_test_x") == (
        "event is live mode but the project's Stripe key is a test key"
    )
    assert ownership.mode_mismatch({"livemode": False}, "rk_live_x") is not None
    assert ownership.mode_mismatch({"livemode": False}, "sk_test_x") is None
    assert ownership.mode_mismatch({"livemode": True}, "sk_live_x") is None
    assert ownership.mode_mismatch({"livemode": True}, None) is None


# ---------------------------------------------------------------- two projects, one account, every handled type


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("alpha_endpoint", ["project", "deployment"])
async def test_every_handled_event_changes_exactly_one_project(
    read, fake_stripe, hooked, bravo, deliver, alpha_endpoint
):
    """Stripe delivers each event to every endpoint of the account: Alpha applies it, Bravo ignores it."""
    alpha = hooked
    alpha_path = dict(path="/api/webhook", secret=DEPLOY_WHSEC) if alpha_endpoint == "deployment" else {}
    bravo_path = dict(path=f"/api/webhook/{bravo.project.public_id}", secret=BRAVO_WHSEC)
    # Bravo has its own user "42" (an unpaid checkout); Alpha's "42" pays.
    with db.block():
        Customer.create(
            project=bravo.project, external_user_id="42", email="bob@bravo.test", stripe_customer_id="cus_bravo_42"
        )
    session, sub = new_subscription(fake_stripe, "42", project_id=alpha.project.public_id)
    # A subscription made outside PaymentPulse (no metadata) for a customer Alpha linked earlier.
    _, loose = new_subscription(fake_stripe, "legacy")
    with db.block():
        Customer.create(project=alpha.project, external_user_id="legacy", stripe_customer_id=loose["customer"])
    fake_stripe.set_subscription(
        loose["id"], metadata={"external_user_id": "", "plan_slug": "", "interval": "", "pulse_project_id": ""}
    )

    def story():
        yield event("checkout.session.completed", session)
        yield event("customer.subscription.created", fake_stripe.subscription(sub["id"]))
        yield event("invoice.paid", invoice(fake_stripe.subscription(sub["id"])))
        yield event("customer.subscription.updated", fake_stripe.set_subscription(sub["id"], status="past_due"))
        yield event("invoice.payment_failed", invoice(fake_stripe.subscription(sub["id"]), paid=False))
        yield event("customer.subscription.paused", fake_stripe.set_subscription(sub["id"], status="paused"))
        yield event("customer.subscription.resumed", fake_stripe.set_subscription(sub["id"], status="active"))
        yield event("customer.subscription.updated", fake_stripe.set_subscription(loose["id"], status="past_due"))
        fake_stripe.attach_feature(
            fake_stripe.subscription(sub["id"])["items"]["data"][0]["price"]["product"], "api_access"
        )
        yield event(
            "entitlements.active_entitlement_summary.updated",
            {
                "object": "entitlements.active_entitlement_summary",
                "customer": sub["customer"],
                "livemode": False,
                "entitlements": {"object": "list", "data": [], "has_more": False},
            },
        )
        fake_stripe.dispatch("POST", f"customers/{sub['customer']}", {"email": "new42@alpha.test"})
        yield event("customer.updated", customer_object(sub["customer"], "new42@alpha.test"))
        canceled, tombstone = fake_stripe.delete_customer(sub["customer"])
        yield event(
            "customer.deleted",
            customer_object(sub["customer"], "new42@alpha.test", {"pulse_project_id": alpha.project.public_id}),
        )
        yield event("customer.subscription.deleted", canceled[0])

    seen = set()
    for evt in story():
        seen.add(evt["type"])
        alpha_before, bravo_before = state_of(alpha.project), state_of(bravo.project)
        for path, expected in ((alpha_path, "processed"), (bravo_path, "ignored")):
            resp = await deliver(evt, **path)
            assert resp.code == 200 and body_of(resp) == {"received": True, "outcome": expected}, (evt["type"], path)
        assert state_of(bravo.project) == bravo_before, evt["type"]
        assert state_of(alpha.project) != alpha_before or evt["type"] == "invoice.paid", evt["type"]
        outcome, reason = reason_of(bravo.project, evt)
        assert outcome == "ignored" and ("another project" in reason or "not linked" in reason), (evt, reason)
    assert seen == set(events.HANDLED)
    found = await read(alpha, "42")
    assert (found["status"], found["has_access"], found["email"]) == ("cancelled", False, "new42@alpha.test")
    assert (await read(alpha, "legacy"))["status"] == "past_due"
    assert (await read(bravo, "42")) is None and (await read(bravo, "legacy")) is None


@pytest.mark.gen_test(timeout=30)
async def test_a_session_naming_another_projects_user_is_ignored(read, fake_stripe, hooked, bravo, deliver):
    """Alpha's checkout for its user "7" says client_reference_id "7": Bravo gains no user "7"."""
    session, sub = new_subscription(fake_stripe, "7", project_id=hooked.project.public_id)
    for evt in (event("customer.subscription.created", sub), event("checkout.session.completed", session)):
        resp = await deliver(evt, path=f"/api/webhook/{bravo.project.public_id}", secret=BRAVO_WHSEC)
        assert body_of(resp)["outcome"] == "ignored"
    assert await read(bravo, "7") is None
    assert state_of(bravo.project) == ([], [], [])


@pytest.mark.gen_test(timeout=30)
async def test_livemode_must_match_the_key_and_a_404_is_never_applied_from_the_payload(
    read, fake_stripe, hooked, deliver, make_project
):
    session, sub = new_subscription(fake_stripe, "mode", project_id=hooked.project.public_id)
    live = event("customer.subscription.created", sub)
    live["livemode"] = True
    before = len(fake_stripe.requests)
    assert body_of(await deliver(live))["outcome"] == "ignored"
    assert reason_of(hooked.project, live) == (
        "ignored",
        "event is live mode but the project's Stripe key is a test key",
    )
    assert len(fake_stripe.requests) == before  # not even re-read
    # A live-key project never applies test-mode events.
    secret = "whsec_live_" + "f" * 24
    live_project = make_project(
        name="Live", stripe_webhook_secret=secret, stripe_secret_key="sk_live_" + secrets.token_hex(12)
    )
    test_event = event("customer.subscription.created", sub)
    resp = await deliver(test_event, path=f"/api/webhook/{live_project.project.public_id}", secret=secret)
    assert body_of(resp)["outcome"] == "ignored"
    # The payload names this project, but Stripe does not know the subscription: nothing is applied.
    ghost = dict(sub, id="sub_ghost_" + secrets.token_hex(4))
    evt = event("customer.subscription.created", ghost)
    assert body_of(await deliver(evt))["outcome"] == "ignored"
    outcome, reason = reason_of(hooked.project, evt)
    assert "404" in reason and ghost["id"] in reason
    assert await read(hooked, "mode") is None


@pytest.mark.gen_test(timeout=30)
async def test_console_reapply_uses_the_same_rule(fake_stripe, hooked, bravo, deliver, http_client, base_url):
    """A failed delivery of Alpha's event to Bravo (Stripe down), re-applied in the console: ignored, and
    the console says why."""
    from tests.console_support import Console, text

    session, sub = new_subscription(fake_stripe, "late", project_id=hooked.project.public_id)
    evt = event("customer.subscription.created", sub)
    fake_stripe.fail_next(1, status=500, path="/v1/subscriptions")
    resp = await deliver(evt, path=f"/api/webhook/{bravo.project.public_id}", secret=BRAVO_WHSEC)
    assert resp.code == 500
    [row] = events_of(bravo.project, stripe_event_id=evt["id"])
    assert row.outcome == "failed"
    console = Console(http_client, base_url)
    assert (await console.login(bravo.admin.email)).code == 302
    events_url = f"/console/p/{bravo.project.public_id}/events"
    assert (await console.post(f"{events_url}/{row.id}/reapply")).code == 303
    outcome, reason = reason_of(bravo.project, evt)
    assert outcome == "ignored" and "another project" in reason
    assert state_of(bravo.project) == ([], [], [])
    page = text(await console.get(f"{events_url}/{row.id}"))
    assert "Why ignored" in page and f"pulse_project_id {hooked.project.public_id}" in page
    assert "belongs to another project" in text(await console.get(f"{events_url}?outcome=ignored"))


# ---------------------------------------------------------------- the attacker (security review M1)


@pytest.mark.gen_test(timeout=60)
async def test_a_tenant_forging_events_with_another_tenants_ids_gets_nothing(
    read, fake_stripe, hooked, deliver, make_project, http_client, base_url
):
    """Mallory shares the deployment key, sets her own webhook secret and signs events naming the
    victim's cus_/sub_ ids: nothing is applied; her API shows no subscription, email or portal for them."""
    victim = hooked
    session, sub = new_subscription(
        fake_stripe, "vip7", project_id=victim.project.public_id, email="vip7@victim-customer.test"
    )
    assert body_of(await deliver(event("checkout.session.completed", session)))["outcome"] == "processed"
    # Also a subscription without metadata for the victim's linked customer (made in the Dashboard).
    _, side = new_subscription(fake_stripe, "vip7-side")
    fake_stripe.subscriptions[side["id"]]["customer"] = sub["customer"]
    fake_stripe.set_subscription(side["id"], metadata={"pulse_project_id": "", "external_user_id": ""})
    victim_before = state_of(victim.project)

    secret = "whsec_mallory_" + "9" * 24
    mallory = make_project(name="Mallory", stripe_webhook_secret=secret)
    to_mallory = dict(path=f"/api/webhook/{mallory.project.public_id}", secret=secret)
    spy = {"pulse_project_id": mallory.project.public_id, "external_user_id": "spy"}
    forged = [
        event(
            "checkout.session.completed",
            {
                "id": session["id"],
                "object": "checkout.session",
                "mode": "subscription",
                "customer": sub["customer"],
                "subscription": sub["id"],
                "client_reference_id": "spy",
                "metadata": spy,
            },
        ),
        event(
            "checkout.session.completed",
            {
                "id": "cs_forged",
                "object": "checkout.session",
                "mode": "subscription",
                "customer": sub["customer"],
                "subscription": side["id"],
                "client_reference_id": "spy",
                "metadata": spy,
                "customer_details": {"email": "x@evil.test"},
            },
        ),
        event("customer.subscription.updated", dict(sub, metadata=spy)),
        event("customer.subscription.created", dict(fake_stripe.subscription(side["id"]), metadata=spy)),
        event("invoice.paid", invoice(dict(sub, metadata=spy))),
        event("customer.updated", customer_object(sub["customer"], "vip7@victim-customer.test", spy)),
        event("customer.deleted", customer_object(sub["customer"], "vip7@victim-customer.test", spy)),
    ]
    for evt in forged:
        resp = await deliver(evt, **to_mallory)
        assert resp.code == 200 and body_of(resp)["outcome"] == "ignored", evt["type"]
        assert reason_of(mallory.project, evt)[1]
    assert state_of(mallory.project) == ([], [], [])
    assert state_of(victim.project) == victim_before
    headers = {"X-API-Key": mallory.api_key.api_key, "Content-Type": "application/json"}
    resp = await http_client.fetch(
        f"{base_url}/api/subscription?external_user_id=spy", headers=headers, raise_error=False
    )
    assert resp.code == 404
    resp = await http_client.fetch(
        f"{base_url}/api/portal",
        method="POST",
        headers=headers,
        raise_error=False,
        body='{"external_user_id": "spy", "return_url": "https://evil.test/"}',
    )
    assert resp.code == 404 and not fake_stripe.calls("POST", "/v1/billing_portal")
    resp = await http_client.fetch(f"{base_url}/api/customers/export", headers=headers, raise_error=False)
    assert resp.code == 200 and b"vip7" not in resp.body and sub["customer"].encode() not in resp.body
    assert_matches_stripe(await read(victim, "vip7"), fake_stripe, sub["id"])
