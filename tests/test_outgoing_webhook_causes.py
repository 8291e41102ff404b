"""subscription.updated is sent whenever the answer changes, whatever caused the change (issue 16)."""

import json

import pytest

from pulse import db
from tests.stripe_events import event, new_subscription
from tests.webhook_support import add_endpoint, outgoing_overrides

config_overrides = pytest.fixture(outgoing_overrides)


@pytest.mark.gen_test(timeout=40)
async def test_every_cause_of_a_changed_answer_sends_subscription_updated(
    http_client, base_url, fake_stripe, hooked, deliver, receiver, deliverer
):
    """A lifecycle call, Stripe Entitlements, the plan catalog and the access settings all change the answer."""
    from pulse import projects
    from tests.test_lifecycle import summary

    created = await add_endpoint(http_client, base_url, hooked, receiver.url)
    receiver.secret = created["secret"]
    session, sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id)
    await deliver(event("checkout.session.completed", session))
    await receiver.until(1, event_type="subscription.updated")
    headers = {"X-API-Key": hooked.api_key.api_key, "Content-Type": "application/json"}

    async def post(path, body, method="POST"):
        resp = await http_client.fetch(
            base_url + path, method=method, headers=headers, body=json.dumps(body), raise_error=False
        )
        assert resp.code in (200, 201), resp.body

    await post("/api/subscription/cancel", {"external_user_id": "user-1"})
    fake_stripe.attach_feature("price_monthly", "api_access")
    await deliver(event("entitlements.active_entitlement_summary.updated", summary(sub["customer"], "api_access")))
    await post("/api/plans/starter", {"stripe_price_ids": ["price_monthly"]}, method="PUT")
    current = fake_stripe.set_subscription(sub["id"], status="past_due", cancel_at_period_end=False, cancel_at=None)
    await deliver(event("customer.subscription.updated", current))
    with db.block():
        projects.set_past_due_policy(hooked.project, False)
    updates = await receiver.until(6, event_type="subscription.updated")
    changed = [u["data"]["changed"] for u in updates[1:]]
    assert changed == [
        ["cancel_at", "status"],
        ["features"],
        ["plan_slug"],
        ["cancel_at", "status"],
        ["has_access", "subscriptions_with_access"],
    ]
    assert updates[2]["data"]["object"]["features"] == ["api_access"]
    assert updates[-1]["data"]["object"]["has_access"] is False


@pytest.mark.gen_test(timeout=40)
async def test_sync_stripe_announces_what_the_missed_events_would_have(
    http_client, base_url, fake_stripe, hooked, deliver, receiver, deliverer, app
):
    from pulse import resync

    created = await add_endpoint(http_client, base_url, hooked, receiver.url)
    receiver.secret = created["secret"]
    session, sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id)
    await deliver(event("checkout.session.completed", session))
    await receiver.until(1, event_type="subscription.updated")
    fake_stripe.set_subscription(sub["id"], cancel_at_period_end=True)  # its webhook is lost
    await resync.sync_project(hooked.project, config=app.settings["config"], box=app.settings["secret_box"])
    updates = await receiver.until(2, event_type="subscription.updated")
    assert updates[-1]["data"]["object"]["status"] == "cancelling"
    fake_stripe.delete_customer(sub["customer"])  # and so is customer.deleted's
    await resync.sync_project(hooked.project, config=app.settings["config"], box=app.settings["secret_box"])
    deleted = await receiver.until(1, event_type="customer.deleted")
    assert deleted[0]["data"]["external_user_id"] == "user-1"
    assert (await receiver.until(3, event_type="subscription.updated"))[-1]["data"]["object"]["status"] == "cancelled"


@pytest.mark.gen_test(timeout=60)
async def test_a_checkout_that_changes_the_stored_email_sends_subscription_updated(
    http_client, base_url, fake_stripe, hooked, deliver, receiver, deliverer
):
    """The checkout workflow changes the answer too (the stored email, once Stripe accepted it)."""
    from tests.billing_support import checkout_body

    created = await add_endpoint(http_client, base_url, hooked, receiver.url)
    receiver.secret = created["secret"]
    session, sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id, email="old@x.test")
    await deliver(event("checkout.session.completed", session))
    await receiver.until(1, event_type="subscription.updated")
    ended = fake_stripe.set_subscription(sub["id"], status="canceled")
    await deliver(event("customer.subscription.deleted", ended))
    await receiver.until(2, event_type="subscription.updated")
    headers = {"X-API-Key": hooked.api_key.api_key, "Content-Type": "application/json"}
    # The catalog already knows the pair, so only the checkout's own write can announce the change.
    catalog = json.dumps({"stripe_price_ids": ["price_monthly"]})
    resp = await http_client.fetch(base_url + "/api/plans/pro", method="PUT", headers=headers, body=catalog)
    assert resp.code in (200, 201)
    resp = await http_client.fetch(
        base_url + "/api/checkout",
        method="POST",
        raise_error=False,
        headers={"X-API-Key": hooked.api_key.api_key, "Content-Type": "application/json"},
        body=json.dumps(checkout_body(email="new@x.test", stripe_price_id="price_monthly")),
    )
    assert resp.code == 200, resp.body
    updates = await receiver.until(3, event_type="subscription.updated")
    assert updates[-1]["data"]["changed"] == ["email"]
    assert updates[-1]["data"]["object"]["email"] == "new@x.test"


@pytest.mark.gen_test(timeout=40)
async def test_sync_stripe_announces_an_email_changed_in_stripe(
    http_client, base_url, fake_stripe, hooked, deliver, receiver, deliverer, app
):
    """A missed customer.updated, repaired by sync-stripe, still reaches the app (the answer shows the email)."""
    from pulse import resync

    created = await add_endpoint(http_client, base_url, hooked, receiver.url)
    receiver.secret = created["secret"]
    session, sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id, email="old@x.test")
    await deliver(event("checkout.session.completed", session))
    await receiver.until(1, event_type="subscription.updated")
    fake_stripe.customers[sub["customer"]]["email"] = "new@x.test"  # changed in Stripe, its webhook lost
    await resync.sync_project(hooked.project, config=app.settings["config"], box=app.settings["secret_box"])
    updates = await receiver.until(2, event_type="subscription.updated")
    assert updates[-1]["data"]["changed"] == ["email"]
    assert updates[-1]["data"]["previous_attributes"] == {"email": "old@x.test"}
    assert updates[-1]["data"]["object"]["email"] == "new@x.test"
