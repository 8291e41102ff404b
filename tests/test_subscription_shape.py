"""End to end, one test per kind: our checkout, the real stripe-python, the fake Stripe, signed webhooks, the answer."""

import json
import time

import pytest

from pulse import db
from pulse.models import Project
from tests.billing_support import checkout_body
from tests.stripe_events import event, new_subscription
from tests.support import body_of
from tests.webhook_support import webhook_overrides

config_overrides = pytest.fixture(lambda fake_stripe: webhook_overrides(fake_stripe))


@pytest.fixture
def buy(http_client, base_url, hooked, fake_stripe, deliver):
    """buy(user, price, plan_slug) -> the Stripe subscription: POST /api/checkout, pay, deliver the completion."""

    async def go(user, price, plan_slug, expect=200):
        response = await http_client.fetch(
            base_url + "/api/checkout",
            method="POST",
            raise_error=False,
            headers={"X-API-Key": hooked.api_key.api_key, "Content-Type": "application/json"},
            body=json.dumps(
                checkout_body(
                    external_user_id=user, stripe_price_id=price, plan_slug=plan_slug, email=f"{user}@example.test"
                )
            ),
        )
        assert response.code == expect, response.body
        if expect != 200:
            return body_of(response)
        session_id = body_of(response)["session_id"]
        sub = fake_stripe.complete_checkout(session_id)
        session = fake_stripe.session(session_id)
        session["customer_details"] = {"email": f"{user}@example.test"}
        assert (await deliver(event("checkout.session.completed", session))).code == 200
        return sub

    return go


async def changed(deliver, sub):
    response = await deliver(event("customer.subscription.updated", sub))
    assert body_of(response)["outcome"] == "processed", response.body


@pytest.mark.gen_test(timeout=30)
async def test_plan_slug_follows_portal_and_dashboard_swaps(buy, read, hooked, fake_stripe, deliver):
    fake_stripe.add_price("price_business_monthly")
    fake_stripe.add_price("price_pro_monthly")
    sub = await buy("ada", "price_business_monthly", "business")
    await buy("bob", "price_pro_monthly", "pro")  # the catalog now knows both prices
    assert (await read(hooked, "ada"))["plan_slug"] == "business"

    await changed(deliver, fake_stripe.set_subscription(sub["id"], price="price_pro_monthly"))  # Portal downgrade
    found = await read(hooked, "ada")
    assert (found["plan_slug"], found["stripe_price_id"]) == ("pro", "price_pro_monthly")
    assert fake_stripe.subscription(sub["id"])["metadata"]["plan_slug"] == "business"  # Stripe kept the metadata

    fake_stripe.add_price("price_enterprise_custom")  # a Dashboard swap to a price nobody checked out
    await changed(deliver, fake_stripe.set_subscription(sub["id"], price="price_enterprise_custom"))
    assert (await read(hooked, "ada"))["plan_slug"] is None  # unknown, never the old plan's slug
    fake_stripe.add_price("price_ent_lookup", lookup_key="enterprise")
    await changed(deliver, fake_stripe.set_subscription(sub["id"], price="price_ent_lookup"))
    assert (await read(hooked, "ada"))["plan_slug"] == "enterprise"
    await changed(deliver, fake_stripe.set_subscription(sub["id"], price="price_business_monthly"))
    assert (await read(hooked, "ada"))["plan_slug"] == "business"

    refused = await buy("cy", "price_pro_monthly", "business", expect=400)
    assert refused["error"]["field"] == "plan_slug"


@pytest.mark.gen_test(timeout=30)
async def test_several_items_report_the_plan_item_and_its_seats(buy, read, hooked, fake_stripe, deliver):
    fake_stripe.add_price("price_pro_yearly", "year", 20000)
    fake_stripe.add_price("price_api_calls", "month", 0, usage_type="metered")
    fake_stripe.add_price("price_extra_storage", "month", 300)
    sub = await buy("ada", "price_pro_yearly", "pro")
    fake_stripe.set_subscription(sub["id"], quantity=4)
    fake_stripe.add_item(sub["id"], "price_api_calls", quantity=None, first=True)
    fake_stripe.add_price("plan_old_calls", "month", 0, usage_type="metered")
    fake_stripe.add_item(sub["id"], "plan_old_calls", quantity=None, first=True, legacy=True)  # only a `plan` object
    current = fake_stripe.add_item(sub["id"], "price_extra_storage", quantity=2, first=True)
    assert [(i.get("price") or i["plan"])["id"] for i in current["items"]["data"]] == [
        "price_extra_storage",
        "plan_old_calls",
        "price_api_calls",
        "price_pro_yearly",
    ]  # the plan item comes last
    await changed(deliver, current)
    found = await read(hooked, "ada")
    assert (
        found["stripe_price_id"],
        found["interval"],
        found["interval_count"],
        found["quantity"],
        found["plan_slug"],
    ) == ("price_pro_yearly", "yearly", 1, 4, "pro")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "interval, count, word",
    [
        ("day", 1, "daily"),
        ("week", 1, "weekly"),
        ("week", 2, "weekly"),
        ("month", 3, "monthly"),
        ("month", 6, "monthly"),
        ("year", 1, "yearly"),
    ],
)
async def test_every_billing_interval(
    buy, read, hooked, fake_stripe, deliver, http_client, base_url, interval, count, word
):
    fake_stripe.add_price("price_every", interval, 9900, interval_count=count)
    await buy("ada", "price_every", "pro")
    found = await read(hooked, "ada")
    assert (found["interval"], found["interval_count"], found["quantity"]) == (word, count, 1)
    export = await http_client.fetch(
        base_url + "/api/customers/export?format=json", headers={"X-API-Key": hooked.api_key.api_key}
    )
    exported = body_of(export)["customers"][0]["subscription"]
    assert {k: exported[k] for k in ("interval", "interval_count")} == {"interval": word, "interval_count": count}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("behavior", ["keep_as_draft", "mark_uncollectible", "void"])
async def test_paused_collection_is_shown_and_follows_the_project_setting(
    buy, read, hooked, fake_stripe, deliver, behavior
):
    sub = await buy("ada", "price_pro_monthly", "pro")
    resumes = int(time.time()) + 90 * 86400
    await changed(
        deliver, fake_stripe.set_subscription(sub["id"], pause_collection={"behavior": behavior, "resumes_at": resumes})
    )
    found = await read(hooked, "ada")
    assert found["status"] == "active" and found["has_access"] is True  # default: the pause keeps access
    assert found["pause_collection"] == {
        "behavior": behavior,
        "resumes_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(resumes)),
    }
    with db.block():
        Project.update(paused_collection_has_access=False).where(Project.id == hooked.project.id).execute()
    assert (await read(hooked, "ada"))["has_access"] is False
    await changed(deliver, fake_stripe.set_subscription(sub["id"], pause_collection=None))
    found = await read(hooked, "ada")
    assert found["pause_collection"] is None and found["has_access"] is True


@pytest.mark.gen_test(timeout=30)
async def test_two_subscriptions_with_access_are_reported(buy, read, hooked, fake_stripe, deliver):
    sub = await buy("ada", "price_pro_monthly", "pro")
    assert (await read(hooked, "ada"))["subscriptions_with_access"] == 1
    # A second one made in the Dashboard for the same Stripe customer.
    _, extra = new_subscription(fake_stripe, "ada", project_id=hooked.project.public_id, price="price_team")
    fake_stripe.subscriptions[extra["id"]]["customer"] = sub["customer"]
    assert (await deliver(event("customer.subscription.created", fake_stripe.subscription(extra["id"])))).code == 200
    found = await read(hooked, "ada")
    assert found["subscriptions_with_access"] == 2
    await changed(deliver, fake_stripe.set_subscription(extra["id"], status="canceled"))
    assert (await read(hooked, "ada"))["subscriptions_with_access"] == 1


@pytest.mark.gen_test(timeout=30)
async def test_sync_stripe_repairs_a_swap_whose_webhook_was_lost(buy, read, hooked, fake_stripe, app):
    from pulse import resync

    fake_stripe.add_price("price_team_quarterly", "month", 27000, interval_count=3)
    sub = await buy("ada", "price_pro_monthly", "pro")
    await buy("bob", "price_team_quarterly", "team")
    fake_stripe.set_subscription(
        sub["id"],
        price="price_team_quarterly",
        quantity=3,
        pause_collection={"behavior": "keep_as_draft", "resumes_at": None},
    )
    assert (await read(hooked, "ada"))["plan_slug"] == "pro"  # the webhook never came
    await resync.sync_project(hooked.project, config=app.settings["config"], box=app.settings["secret_box"])
    found = await read(hooked, "ada")
    assert {
        k: found[k]
        for k in ("plan_slug", "stripe_price_id", "interval", "interval_count", "quantity", "pause_collection")
    } == {
        "plan_slug": "team",
        "stripe_price_id": "price_team_quarterly",
        "interval": "monthly",
        "interval_count": 3,
        "quantity": 3,
        "pause_collection": {"behavior": "keep_as_draft", "resumes_at": None},
    }
