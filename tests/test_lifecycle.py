"""Subscription lifecycle API and Stripe Entitlements, end to end through the real server and the fake Stripe."""

import json

import pytest

from tests.stripe_events import event, new_subscription
from tests.support import body_of
from tests.webhook_support import webhook_overrides

config_overrides = pytest.fixture(lambda fake_stripe: webhook_overrides(fake_stripe))


@pytest.fixture
def call(http_client, base_url, hooked):
    async def send(method, path, body=None, headers=None):
        all_headers = {"X-API-Key": hooked.api_key.api_key, **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        return await http_client.fetch(
            base_url + path,
            method=method,
            headers=all_headers,
            body=json.dumps(body) if body is not None else None,
            raise_error=False,
        )

    return send


@pytest.fixture
def subscribed(fake_stripe, hooked, deliver, io_loop):
    """user-1 with an active monthly subscription, stored through checkout.session.completed."""
    session, sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id)

    async def go():
        resp = await deliver(event("checkout.session.completed", session))
        assert body_of(resp)["outcome"] == "processed"

    io_loop.run_sync(go)
    return sub


@pytest.mark.gen_test(timeout=30)
async def test_cancel_at_period_end_then_resume_store_stripes_answer_at_once(
    call, fake_stripe, subscribed, read, hooked, deliver
):
    resp = await call("POST", "/api/subscription/cancel", {"external_user_id": "user-1"})
    assert resp.code == 200, resp.body
    answer = body_of(resp)
    stripe_sub = fake_stripe.subscription(subscribed["id"])
    assert stripe_sub["cancel_at_period_end"] is True and stripe_sub["cancel_at"]
    assert answer["status"] == "cancelling" and answer["has_access"] is True and answer["cancel_at"]
    assert await read(hooked, "user-1") == answer  # no wait for the webhook
    # Stripe's own webhook comes later and changes nothing.
    assert body_of(await deliver(event("customer.subscription.updated", stripe_sub)))["outcome"] == "processed"
    assert await read(hooked, "user-1") == answer

    resp = await call("POST", "/api/subscription/resume", {"external_user_id": "user-1"})
    assert resp.code == 200, resp.body
    stripe_sub = fake_stripe.subscription(subscribed["id"])
    assert (stripe_sub["cancel_at_period_end"], stripe_sub["cancel_at"]) == (False, None)
    assert body_of(resp)["status"] == "active" and body_of(resp)["cancel_at"] is None
    resp = await call("POST", "/api/subscription/resume", {"external_user_id": "user-1"})
    assert resp.code == 409 and body_of(resp)["error"]["code"] == "not_cancelling"

    # A cancel_at date (the new Dashboard's way) is undone too.
    stripe_sub = fake_stripe.set_subscription(
        subscribed["id"], cancel_at=stripe_sub["items"]["data"][0]["current_period_end"] - 86400
    )
    await deliver(event("customer.subscription.updated", stripe_sub))
    assert (await read(hooked, "user-1"))["status"] == "cancelling"
    resp = await call("POST", "/api/subscription/resume", {"external_user_id": "user-1"})
    assert body_of(resp)["status"] == "active" and fake_stripe.subscription(subscribed["id"])["cancel_at"] is None


@pytest.mark.gen_test(timeout=30)
async def test_cancel_now_ends_the_subscription(call, fake_stripe, subscribed, read, hooked):
    resp = await call("POST", "/api/subscription/cancel", {"external_user_id": "user-1", "at_period_end": False})
    assert resp.code == 200, resp.body
    assert body_of(resp)["status"] == "cancelled" and body_of(resp)["has_access"] is False
    assert fake_stripe.subscription(subscribed["id"])["status"] == "canceled"
    assert (await read(hooked, "user-1"))["status"] == "cancelled"
    for path in ("/api/subscription/cancel", "/api/subscription/resume"):
        resp = await call("POST", path, {"external_user_id": "user-1"})
        assert resp.code == 409 and body_of(resp)["error"]["code"] == "subscription_ended"


@pytest.mark.gen_test(timeout=30)
async def test_unknown_users_and_bad_bodies(call, subscribed):
    resp = await call("POST", "/api/subscription/cancel", {"external_user_id": "nobody"})
    assert resp.code == 404 and body_of(resp)["error"]["code"] == "not_found"
    resp = await call("POST", "/api/subscription/cancel", {"external_user_id": "user-1", "at_period_end": "yes"})
    assert resp.code == 400 and body_of(resp)["error"]["field"] == "at_period_end"
    resp = await call("POST", "/api/subscription/cancel", {"external_user_id": "user-1", "now": True})
    assert resp.code == 400 and body_of(resp)["error"]["field"] == "now"
    resp = await call("POST", "/api/subscription/change", {"external_user_id": "user-1"})
    assert resp.code == 422 and body_of(resp)["error"]["field"] == "stripe_price_id"
    resp = await call(
        "POST",
        "/api/subscription/change",
        {"external_user_id": "user-1", "stripe_price_id": "price_x", "proration_behavior": "sometimes"},
    )
    assert resp.code == 400 and body_of(resp)["error"]["field"] == "proration_behavior"
    resp = await call(
        "POST", "/api/subscription/change", {"external_user_id": "user-1", "plan_slug": "pro", "quantity": None}
    )
    assert resp.code == 400 and body_of(resp)["error"]["field"] == "quantity"
    resp = await call("GET", "/api/invoices?external_user_id=user-1&limit=0")
    assert resp.code == 400 and body_of(resp)["error"]["field"] == "limit"


@pytest.mark.gen_test(timeout=30)
async def test_change_plan_by_price_or_catalog_slug_with_idempotency(call, fake_stripe, subscribed, read, hooked):
    fake_stripe.add_price("price_team", "month", 5000)
    body = {"external_user_id": "user-1", "stripe_price_id": "price_team", "quantity": 3, "proration_behavior": "none"}
    first = await call("POST", "/api/subscription/change", body, headers={"Idempotency-Key": "chg-1"})
    assert first.code == 200, first.body
    assert (body_of(first)["stripe_price_id"], body_of(first)["quantity"]) == ("price_team", 3)
    again = await call("POST", "/api/subscription/change", body, headers={"Idempotency-Key": "chg-1"})
    assert again.headers.get("Idempotent-Replayed") == "true" and body_of(again) == body_of(first)
    updates = [r for r in fake_stripe.calls("POST", f"/v1/subscriptions/{subscribed['id']}")]
    assert len(updates) == 1 and updates[0][2]["proration_behavior"] == "none"
    assert updates[0][3].get("Idempotency-Key", "").startswith("pulse-change-")
    item = fake_stripe.subscription(subscribed["id"])["items"]["data"][0]
    assert (item["price"]["id"], item["quantity"]) == ("price_team", 3)
    assert await read(hooked, "user-1") == body_of(first)

    # By plan_slug: the catalog's only price of the plan.
    fake_stripe.add_price("price_scale", "month", 9000)
    assert (await call("PUT", "/api/plans/scale", {"stripe_price_ids": ["price_scale"]})).code == 201
    resp = await call("POST", "/api/subscription/change", {"external_user_id": "user-1", "plan_slug": "scale"})
    assert resp.code == 200, resp.body
    assert (body_of(resp)["plan_slug"], body_of(resp)["stripe_price_id"]) == ("scale", "price_scale")
    resp = await call("POST", "/api/subscription/change", {"external_user_id": "user-1", "plan_slug": "nope"})
    assert resp.code == 400 and body_of(resp)["error"]["field"] == "plan_slug"


@pytest.mark.gen_test(timeout=30)
async def test_stripe_rejecting_the_price_names_our_field(call, subscribed):
    resp = await call(
        "POST", "/api/subscription/change", {"external_user_id": "user-1", "stripe_price_id": "price_unknown"}
    )
    assert resp.code == 400, resp.body
    error = body_of(resp)["error"]
    assert (error["code"], error["field"]) == ("invalid_field", "stripe_price_id")
    assert "No such price" in error["message"] and error["stripe_request_id"].startswith("req_")


@pytest.mark.gen_test(timeout=30)
async def test_change_preview_returns_stripes_invoice_preview_and_changes_nothing(call, fake_stripe, subscribed):
    fake_stripe.add_price("price_team", "month", 5000)
    version = fake_stripe.version(subscribed["id"])
    resp = await call(
        "POST", "/api/subscription/change/preview", {"external_user_id": "user-1", "stripe_price_id": "price_team"}
    )
    assert resp.code == 200, resp.body
    preview = body_of(resp)
    assert preview["currency"] == "usd" and preview["amount_due_now"] == 0
    assert 0 < preview["proration_amount"] <= 3000  # 50.00 - 20.00 for the rest of the period
    assert preview["next_invoice"]["amount_due"] == 5000 + preview["proration_amount"]
    # Stripe's two proration lines (unused time on the old price, remaining time on the new), then the period.
    assert [line["proration"] for line in preview["lines"]] == [True, True, False]
    credit, charge, period = (line["amount"] for line in preview["lines"])
    assert credit < 0 < charge and abs(charge * 2000 - -credit * 5000) <= 5000 and period == 5000
    assert credit + charge == preview["proration_amount"]
    resp = await call(
        "POST",
        "/api/subscription/change/preview",
        {"external_user_id": "user-1", "stripe_price_id": "price_team", "proration_behavior": "always_invoice"},
    )
    preview = body_of(resp)
    assert preview["amount_due_now"] == preview["proration_amount"] > 0 and preview["next_invoice"] is None
    assert fake_stripe.version(subscribed["id"]) == version
    call_params = fake_stripe.calls("POST", "/v1/invoices/create_preview")[0][2]
    assert call_params["subscription"] == subscribed["id"]
    assert call_params["subscription_details"]["items"][0]["price"] == "price_team"


@pytest.mark.gen_test(timeout=30)
async def test_invoices_are_listed_and_paged_as_stripe_pages(call, fake_stripe, subscribed):
    made = [fake_stripe.add_invoice(subscribed["id"], amount_due=2000 + n, created=1_700_000_000 + n) for n in range(3)]
    resp = await call("GET", "/api/invoices?external_user_id=user-1&limit=2")
    assert resp.code == 200, resp.body
    page = body_of(resp)
    assert [i["id"] for i in page["data"]] == [made[2]["id"], made[1]["id"]] and page["has_more"] is True
    first = page["data"][0]
    assert first["number"] == made[2]["number"] and first["status"] == "paid" and first["currency"] == "usd"
    assert first["amount_due"] == 2002 and first["hosted_invoice_url"] == made[2]["hosted_invoice_url"]
    assert first["invoice_pdf"] == made[2]["invoice_pdf"] and first["stripe_subscription_id"] == subscribed["id"]
    assert first["period_start"].endswith("Z") and first["period_end"].endswith("Z")
    cursor = page["next_starting_after"]
    resp = await call("GET", f"/api/invoices?external_user_id=user-1&limit=2&starting_after={cursor}")
    page = body_of(resp)
    assert [i["id"] for i in page["data"]] == [made[0]["id"]] and page["has_more"] is False
    assert page["next_starting_after"] is None
    resp = await call("GET", "/api/invoices?external_user_id=nobody")
    assert resp.code == 404


# ---------------------------------------------------------------- Stripe Entitlements


def summary(customer_id, *lookup_keys):
    """The payload of entitlements.active_entitlement_summary.updated (only a hint: we re-read Stripe's list)."""
    return {
        "object": "entitlements.active_entitlement_summary",
        "customer": customer_id,
        "livemode": False,
        "entitlements": {
            "object": "list",
            "has_more": False,
            "url": "/v1/entitlements/active_entitlements",
            "data": [
                {
                    "id": f"ent_{k}",
                    "object": "entitlements.active_entitlement",
                    "feature": f"feat_{k}",
                    "livemode": False,
                    "lookup_key": k,
                }
                for k in lookup_keys
            ],
        },
    }


@pytest.mark.gen_test(timeout=30)
async def test_entitlements_event_stores_stripes_features_and_the_fast_check_answers(
    call, fake_stripe, subscribed, read, hooked, deliver
):
    fake_stripe.attach_feature("price_monthly", "api_access")
    fake_stripe.attach_feature("price_monthly", "exports")
    # The payload claims a feature Stripe does not list: the re-read list is what counts.
    resp = await deliver(
        event(
            "entitlements.active_entitlement_summary.updated",
            summary(subscribed["customer"], "api_access", "admin_panel"),
        )
    )
    assert body_of(resp)["outcome"] == "processed"
    assert (await read(hooked, "user-1"))["features"] == ["api_access", "exports"]
    checks = {}
    for feature in ("api_access", "exports", "admin_panel"):
        resp = await call("GET", f"/api/entitlements/{feature}?external_user_id=user-1")
        assert resp.code == 200, resp.body
        checks[feature] = body_of(resp)["has_access"]
    assert checks == {"api_access": True, "exports": True, "admin_panel": False}
    resp = await call("GET", "/api/entitlements/api_access?external_user_id=nobody")
    assert resp.code == 404

    # A plan change moves the features at once (no wait for Stripe's event).
    fake_stripe.add_price("price_team", "month", 5000)
    fake_stripe.attach_feature("price_team", "admin_panel")
    resp = await call(
        "POST", "/api/subscription/change", {"external_user_id": "user-1", "stripe_price_id": "price_team"}
    )
    assert resp.code == 200, resp.body
    assert (await read(hooked, "user-1"))["features"] == ["admin_panel"]
    resp = await call("GET", "/api/entitlements/api_access?external_user_id=user-1")
    assert body_of(resp)["has_access"] is False


@pytest.mark.gen_test(timeout=30)
async def test_entitlements_of_another_projects_customer_are_ignored(
    fake_stripe, subscribed, make_project, deliver, read, hooked
):
    fake_stripe.attach_feature("price_monthly", "api_access")
    other = make_project(name="Other")
    _, theirs = new_subscription(fake_stripe, "user-9", project_id=other.project.public_id)
    resp = await deliver(
        event("entitlements.active_entitlement_summary.updated", summary(theirs["customer"], "api_access"))
    )
    assert body_of(resp)["outcome"] == "ignored"
    assert (await read(hooked, "user-1"))["features"] == []


@pytest.mark.gen_test(timeout=30)
async def test_entitlements_event_before_the_checkout_event_is_kept(fake_stripe, hooked, deliver, read, call):
    session, sub = new_subscription(fake_stripe, "user-2", project_id=hooked.project.public_id)
    fake_stripe.attach_feature("price_monthly", "api_access")
    resp = await deliver(
        event("entitlements.active_entitlement_summary.updated", summary(sub["customer"], "api_access"))
    )
    assert body_of(resp)["outcome"] == "processed"  # the customer's metadata names the user
    assert body_of(await call("GET", "/api/entitlements/api_access?external_user_id=user-2"))["has_access"] is True
    assert body_of(await deliver(event("checkout.session.completed", session)))["outcome"] == "processed"
    assert (await read(hooked, "user-2"))["features"] == ["api_access"]


@pytest.mark.gen_test(timeout=30)
async def test_every_lifecycle_answer_is_the_stored_state_after_the_call_features_included(
    call, fake_stripe, subscribed, read, hooked
):
    """The answer of change was built before its own entitlements refresh: its features were the old plan's."""
    fake_stripe.add_price("price_team", "month", 5000)
    fake_stripe.attach_feature("price_team", "admin_panel")
    steps = [
        ("/api/subscription/change", {"stripe_price_id": "price_team"}, ["admin_panel"]),
        ("/api/subscription/cancel", {"at_period_end": True}, ["admin_panel"]),
        ("/api/subscription/resume", {}, ["admin_panel"]),
        ("/api/subscription/cancel", {"at_period_end": False}, []),  # ended now: Stripe lists no entitlement
    ]
    for path, body, features in steps:
        resp = await call("POST", path, {"external_user_id": "user-1", **body})
        assert resp.code == 200, resp.body
        answer = body_of(resp)
        assert answer["features"] == features, (path, answer)
        assert answer == await read(hooked, "user-1"), path
