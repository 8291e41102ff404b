"""Event ownership: projects sharing one Stripe account each apply only their own events (issue 10.1, 11.3)."""

import json
import secrets

import pytest

from pulse import db, events, ownership
from pulse import subscriptions as subs
from pulse.models import Customer, CustomerFeature, StripeCustomerHistory, Subscription
from tests.billing_support import checkout_body
from tests.stripe_events import customer_object, event, invoice, new_subscription
from tests.support import body_of
from tests.webhook_support import DEPLOY_WHSEC, assert_matches_stripe, events_of, webhook_overrides

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


def reason_of(project, evt):
    [row] = events_of(project, stripe_event_id=evt["id"])
    return row.outcome, row.reason


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


def test_retiring_a_deleted_stripe_customer(make_project):
    """The customer.deleted rule: unlink, keep the id, end the subscriptions unless newer news is stored."""
    from tests.billing_support import add_customer, add_subscription

    project = make_project(name="Alpha").project
    ada = add_customer(project, "ada", stripe_customer_id="cus_ada")
    live = add_subscription(ada, snapshot_at=1_000)
    newer = add_subscription(ada, snapshot_at=9_000)  # a re-read after the deletion already stored it
    with db.block():
        with db.transaction():
            assert subs.retire_stripe_customer(project, "cus_ada", subs.DELETED_IN_STRIPE, 5_000).id == ada.id
            assert subs.retire_stripe_customer(project, "cus_ada", subs.DELETED_IN_STRIPE, 6_000).id == ada.id
            assert subs.retire_stripe_customer(project, "cus_nobody", subs.DELETED_IN_STRIPE, 6_000) is None
        assert Customer.get_by_id(ada.id).stripe_customer_id is None
        history = [(cid, why) for cid, why, _ in subs.previous_stripe_customers(ada)]
        assert history == [("cus_ada", "deleted in Stripe")]
        assert (Subscription.get_by_id(live.id).status, Subscription.get_by_id(live.id).snapshot_at) == (
            "cancelled",
            5_000,
        )  # the repeated event found it cancelled already
        assert Subscription.get_by_id(newer.id).status == "active"
        # Never linked again, whoever names it.
        with db.transaction():
            assert subs.resolve_customer(project, "cus_ada", "ada").stripe_customer_id is None
            assert subs.resolve_customer(project, "cus_ada", "bob").stripe_customer_id is None
        assert ownership.not_owned(project, [{"metadata": {}}], "cus_ada") is None  # its late events are still ours


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


# ---------------------------------------------------------------- customer deleted in Stripe


@pytest.mark.gen_test(timeout=30)
async def test_customer_deleted_unlinks_keeps_history_and_cancels(read, fake_stripe, hooked, deliver, api_client):
    session, sub = new_subscription(fake_stripe, "ada", project_id=hooked.project.public_id)
    assert body_of(await deliver(event("checkout.session.completed", session)))["outcome"] == "processed"
    old_customer = sub["customer"]
    # A forged customer.deleted for a customer Stripe still has changes nothing.
    evt = event("customer.deleted", customer_object(old_customer, "ada@example.test"))
    assert body_of(await deliver(evt))["outcome"] == "ignored"
    assert reason_of(hooked.project, evt)[1] == "the customer still exists at Stripe"
    canceled, _ = fake_stripe.delete_customer(old_customer)
    # Stripe sends both events in any order; customer.deleted first is the harder one.
    assert (
        body_of(await deliver(event("customer.deleted", customer_object(old_customer, "ada@example.test"))))["outcome"]
        == "processed"
    )
    found = await read(hooked, "ada")
    assert (found["status"], found["has_access"], found["stripe_customer_id"]) == ("cancelled", False, None)
    assert body_of(await deliver(event("customer.subscription.deleted", canceled[0])))["outcome"] == "processed"
    with db.block():
        customer = Customer.get(Customer.project == hooked.project, Customer.external_user_id == "ada")
        assert customer.stripe_customer_id is None  # the late event did not link the deleted id again
        assert [(cid, why) for cid, why, _ in subs.previous_stripe_customers(customer)] == [
            (old_customer, "deleted in Stripe")
        ]
    assert_matches_stripe(dict(found, stripe_customer_id=old_customer), fake_stripe, sub["id"])
    resp = await api_client("POST", "/api/portal", {"external_user_id": "ada", "return_url": "https://app.test/"})
    assert resp.code == 404 and body_of(resp)["error"]["code"] == "not_found"
    assert "no longer exists in Stripe" in body_of(resp)["error"]["message"]
    assert not fake_stripe.calls("POST", "/v1/billing_portal")
    # The next checkout creates a new Stripe customer.
    resp = await api_client("POST", "/api/checkout", checkout_body(external_user_id="ada"))
    assert resp.code == 200, resp.body
    with db.block():
        new_id = Customer.get_by_id(customer.id).stripe_customer_id
    assert new_id and new_id != old_customer and new_id in fake_stripe.customers
    resp = await api_client("POST", "/api/portal", {"external_user_id": "ada", "return_url": "https://app.test/"})
    assert resp.code == 200


@pytest.fixture
def api_client(http_client, base_url, hooked):
    async def call(method, path, body):
        return await http_client.fetch(
            base_url + path,
            method=method,
            body=json.dumps(body),
            raise_error=False,
            headers={"X-API-Key": hooked.api_key.api_key, "Content-Type": "application/json"},
        )

    return call


# ---------------------------------------------------------------- end to end: run.py serve, stripe-python, the fake


@pytest.mark.gen_test(timeout=90)
async def test_shared_account_and_deleted_customer_through_the_real_server(db_url, fake_stripe):
    import tornado.httpclient

    from tests.fake_stripe import FAKE_SECRET_KEY
    from tests.live_server import LiveServer
    from tests.stripe_events import body_of_event, sign

    env = {
        "PULSE_STRIPE_API_BASE": fake_stripe.url,
        "PULSE_STRIPE_SECRET_KEY": FAKE_SECRET_KEY,
        "PULSE_STRIPE_MAX_RETRIES": "0",
        "PULSE_STRIPE_WEBHOOK_SECRET": DEPLOY_WHSEC,
    }
    server = LiveServer(db_url, env=env).start()
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    secrets_of = {}

    async def call(method, path, key, body=None, headers=None):
        resp = await client.fetch(
            server.base_url + path,
            method=method,
            raise_error=False,
            body=None if body is None else body if isinstance(body, str) else json.dumps(body),
            headers={"X-API-Key": key, "Content-Type": "application/json", **(headers or {})},
        )
        return resp.code, json.loads(resp.body)

    async def to_every_endpoint(evt):
        """As Stripe does: the event goes to each endpoint of the account, each signed with its own secret."""
        body, outcomes = body_of_event(evt), []
        for path, secret in secrets_of.items():
            code, answer = await call("POST", path, "", body, {"Stripe-Signature": sign(body, secret)})
            assert code == 200, answer
            outcomes.append(answer.get("outcome"))
        return outcomes

    try:
        alpha_whsec = "whsec_alpha_" + "1" * 24
        alpha = server.create_project("Alpha", stripe_webhook_secret=alpha_whsec)
        bravo = server.create_project("Bravo", stripe_webhook_secret=BRAVO_WHSEC)
        secrets_of.update(
            {
                f"/api/webhook/{alpha['project_id']}": alpha_whsec,
                f"/api/webhook/{bravo['project_id']}": BRAVO_WHSEC,
                "/api/webhook": DEPLOY_WHSEC,
            }
        )
        portal = {"external_user_id": "42", "return_url": "https://app.test/account"}
        assert (await call("POST", "/api/checkout", bravo["api_key"], checkout_body(external_user_id="42")))[0] == 200
        code, started = await call("POST", "/api/checkout", alpha["api_key"], checkout_body(external_user_id="42"))
        assert code == 200
        sub = fake_stripe.complete_checkout(started["session_id"])
        session = fake_stripe.session(started["session_id"])
        # Alpha's endpoint applies it, Bravo's ignores it, the deployment endpoint routes it to Alpha: a duplicate
        # (no outcome) of the event Alpha's endpoint already stored.
        for evt in (event("checkout.session.completed", session), event("customer.subscription.created", sub)):
            assert await to_every_endpoint(evt) == ["processed", "ignored", None]
        code, body = await call("GET", "/api/subscription?external_user_id=42", alpha["api_key"])
        assert (code, body["status"], body["has_access"]) == (200, "active", True)
        assert (await call("GET", "/api/subscription?external_user_id=42", bravo["api_key"]))[0] == 404

        canceled, _ = fake_stripe.delete_customer(sub["customer"])
        for evt in (
            event("customer.deleted", customer_object(sub["customer"], "ada@example.test")),
            event("customer.subscription.deleted", canceled[0]),
        ):
            assert await to_every_endpoint(evt) == ["processed", "ignored", None]
        code, body = await call("GET", "/api/subscription?external_user_id=42", alpha["api_key"])
        assert (code, body["status"], body["has_access"], body["stripe_customer_id"]) == (200, "cancelled", False, None)
        code, body = await call("POST", "/api/portal", alpha["api_key"], portal)
        assert (code, body["error"]["code"]) == (404, "not_found")
        assert (await call("POST", "/api/portal", bravo["api_key"], portal))[0] == 200  # Bravo's own customer
        code, _ = await call("POST", "/api/checkout", alpha["api_key"], checkout_body(external_user_id="42"))
        assert code == 200
        assert (await call("POST", "/api/portal", alpha["api_key"], portal))[0] == 200
        assert fake_stripe.calls("POST", "/v1/billing_portal")[-1][2]["customer"] not in (sub["customer"], None)
    finally:
        client.close()
        server.stop()


@pytest.mark.gen_test(timeout=30)
async def test_customer_deleted_after_the_portal_met_the_404_and_after_a_new_checkout(
    read, fake_stripe, hooked, deliver, api_client
):
    session, sub = new_subscription(fake_stripe, "bea", project_id=hooked.project.public_id)
    assert body_of(await deliver(event("checkout.session.completed", session)))["outcome"] == "processed"
    fake_stripe.delete_customer(sub["customer"])
    deleted = event("customer.deleted", {"id": sub["customer"], "object": "customer", "deleted": True})
    # The app asks for the portal before the event arrives: 404, and the link is dropped.
    portal = {"external_user_id": "bea", "return_url": "https://app.test/"}
    assert (await api_client("POST", "/api/portal", portal)).code == 404
    assert (await read(hooked, "bea"))["status"] == "active"  # no word from Stripe about the subscription yet
    # The late customer.deleted still ends the deleted customer's subscriptions.
    assert body_of(await deliver(deleted))["outcome"] == "processed"
    assert (await read(hooked, "bea"))["status"] == "cancelled"

    # A user who subscribed again before a late (or redelivered) customer.deleted keeps the new subscription.
    session2, sub2 = new_subscription(fake_stripe, "cid", project_id=hooked.project.public_id)
    assert body_of(await deliver(event("checkout.session.completed", session2)))["outcome"] == "processed"
    canceled, _ = fake_stripe.delete_customer(sub2["customer"])
    assert body_of(await deliver(event("customer.subscription.deleted", canceled[0])))["outcome"] == "processed"
    assert (await api_client("POST", "/api/portal", dict(portal, external_user_id="cid"))).code == 404
    resp = await api_client("POST", "/api/checkout", checkout_body(external_user_id="cid"))
    assert resp.code == 200, resp.body
    new_sub = fake_stripe.complete_checkout(body_of(resp)["session_id"])
    assert body_of(await deliver(event("customer.subscription.created", new_sub)))["outcome"] == "processed"
    late = event("customer.deleted", {"id": sub2["customer"], "object": "customer", "deleted": True})
    assert body_of(await deliver(late))["outcome"] == "processed"
    found = await read(hooked, "cid")
    assert (found["stripe_subscription_id"], found["status"], found["has_access"]) == (new_sub["id"], "active", True)
    assert found["stripe_customer_id"] == new_sub["customer"] != sub2["customer"]
