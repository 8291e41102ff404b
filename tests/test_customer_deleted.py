"""A customer deleted in Stripe: unlinked, its id kept as history, its subscriptions ended (issue 11.3)."""

import json

import pytest

from pulse import db, ownership
from pulse import subscriptions as subs
from pulse.models import Customer, Subscription
from tests.billing_support import checkout_body
from tests.stripe_events import customer_object, event, new_subscription
from tests.support import body_of
from tests.webhook_support import DEPLOY_WHSEC, assert_matches_stripe, reason_of, webhook_overrides

config_overrides = pytest.fixture(lambda fake_stripe: webhook_overrides(fake_stripe))


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
        bravo_whsec = "whsec_bravo_" + "e" * 24
        bravo = server.create_project("Bravo", stripe_webhook_secret=bravo_whsec)
        secrets_of.update(
            {
                f"/api/webhook/{alpha['project_id']}": alpha_whsec,
                f"/api/webhook/{bravo['project_id']}": bravo_whsec,
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
