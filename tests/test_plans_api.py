"""The plan catalog over HTTP: /api/plans CRUD, checkouts learning their pair, subscriptions following it."""

from urllib.parse import quote

import pytest

from pulse import db
from pulse.models import AuditLog
from tests.billing_support import add_customer, add_subscription, checkout_body
from tests.support import body_of


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides(stripe_max_retries=0)


async def put(api, slug, price_ids, **extra):
    return await api("PUT", "/api/plans/" + quote(slug, safe=""), {"stripe_price_ids": price_ids, **extra})


@pytest.mark.gen_test
async def test_create_list_replace_delete(api):
    response = await put(api, "pro", ["price_pro_monthly", "price_pro_yearly", "price_pro_monthly"])
    assert response.code == 201, response.body
    created = body_of(response)
    assert created["plan_slug"] == "pro" and created["stripe_price_ids"] == ["price_pro_monthly", "price_pro_yearly"]
    assert (await put(api, "team/EU ü", ["plan_legacy_gold"])).code == 201  # any slug; legacy plan ids too
    listed = body_of(await api("GET", "/api/plans"))["plans"]
    assert [(p["plan_slug"], p["stripe_price_ids"]) for p in listed] == [
        ("pro", ["price_pro_monthly", "price_pro_yearly"]),
        ("team/EU ü", ["plan_legacy_gold"]),
    ]
    replaced = await put(api, "pro", ["price_pro_yearly"])
    assert replaced.code == 200 and body_of(replaced)["stripe_price_ids"] == ["price_pro_yearly"]
    deleted = await api("DELETE", "/api/plans/pro")
    assert deleted.code == 200 and body_of(deleted) == {"plan_slug": "pro", "deleted": True}
    assert [p["plan_slug"] for p in body_of(await api("GET", "/api/plans"))["plans"]] == ["team/EU ü"]
    missing = await api("DELETE", "/api/plans/pro")
    assert missing.code == 404 and body_of(missing)["error"]["code"] == "not_found"
    with db.block():
        actions = [a.action for a in AuditLog.select().where(AuditLog.action.startswith("plan."))]
    assert actions == ["plan.saved", "plan.saved", "plan.saved", "plan.deleted"]


@pytest.mark.gen_test
async def test_bad_input_and_conflicts(api):
    assert (await put(api, "pro", ["price_a"])).code == 201
    conflict = await put(api, "basic", ["price_b", "price_a"])
    assert conflict.code == 409
    error = body_of(conflict)["error"]
    assert error["code"] == "plan_conflict" and error["field"] == "stripe_price_ids" and "'pro'" in error["message"]
    cases = [
        ({"stripe_price_ids": "price_a"}, 400, "stripe_price_ids"),
        ({"stripe_price_ids": ["price a"]}, 400, "stripe_price_ids"),
        ({"stripe_price_ids": [7]}, 400, "stripe_price_ids"),
        ({"stripe_price_ids": ["p"] * 101}, 400, "stripe_price_ids"),
        ({}, 422, "stripe_price_ids"),
        ({"stripe_price_ids": [], "colour": "red"}, 400, "colour"),
        ({"stripe_price_ids": []}, 400, "stripe_price_ids"),  # QA #13: a plan needs a price to match anything
    ]
    for body, code, field in cases:
        response = await api("PUT", "/api/plans/x", body)
        assert response.code == code and body_of(response)["error"]["field"] == field, body
    assert (await api("PUT", "/api/plans/" + "x" * 101, {"stripe_price_ids": []})).code == 400
    assert (await api("PUT", "/api/plans/x", body="[1]")).code == 400
    assert (await api("GET", "/api/plans", key="")).code == 401
    assert (await api("PUT", "/api/plans/x", {"stripe_price_ids": []}, key="")).code == 401


@pytest.mark.gen_test
async def test_plans_belong_to_one_project(api, make_project, http_client, base_url):
    assert (await put(api, "pro", ["price_a"])).code == 201
    other = make_project("Other")
    headers = {"X-API-Key": other.api_key.api_key, "Content-Type": "application/json"}
    listed = await http_client.fetch(base_url + "/api/plans", headers=headers)
    assert body_of(listed) == {"plans": []}
    theirs = await http_client.fetch(
        base_url + "/api/plans/basic", method="PUT", headers=headers, body='{"stripe_price_ids": ["price_a"]}'
    )
    assert theirs.code == 201  # the same price may sell another plan in another project


@pytest.mark.gen_test
async def test_checkout_learns_its_pair_and_a_contradiction_is_a_400(api, fake_stripe):
    assert (await api("POST", "/api/checkout", checkout_body())).code == 200
    plans = body_of(await api("GET", "/api/plans"))["plans"]
    assert [(p["plan_slug"], p["stripe_price_ids"]) for p in plans] == [("pro", ["price_pro_monthly"])]
    sessions = len(fake_stripe.calls("POST", "/v1/checkout/sessions"))
    response = await api("POST", "/api/checkout", checkout_body(external_user_id="user-2", plan_slug="business"))
    assert response.code == 400
    error = body_of(response)["error"]
    assert error["field"] == "plan_slug" and "price_pro_monthly" in error["message"]
    assert len(fake_stripe.calls("POST", "/v1/checkout/sessions")) == sessions  # refused before Stripe
    assert (await api("POST", "/api/checkout", checkout_body(external_user_id="user-3"))).code == 200


@pytest.mark.gen_test
async def test_a_price_stripe_refuses_is_not_learned(api, fake_stripe):
    fake_stripe.fail_next(1, status=400, path="/v1/checkout/sessions", message="No such price: 'price_typo'")
    response = await api("POST", "/api/checkout", checkout_body(stripe_price_id="price_typo"))
    assert response.code >= 400
    assert body_of(await api("GET", "/api/plans")) == {"plans": []}


@pytest.mark.gen_test
async def test_catalog_changes_reach_stored_subscriptions_at_once(api, project):
    customer = add_customer(project.project, "user-1")
    add_subscription(customer, "active", stripe_price_id="price_gold_m", plan_slug="", plan_slug_fallback=None)
    other = add_customer(project.project, "user-2")
    add_subscription(
        other, "active", stripe_price_id="price_silver", plan_slug="silver-lookup", plan_slug_fallback="silver-lookup"
    )

    async def slug(user):
        return body_of(await api("GET", "/api/subscription?external_user_id=" + user))["plan_slug"]

    assert await slug("user-1") is None
    await put(api, "gold", ["price_gold_m", "price_silver"])
    assert (await slug("user-1"), await slug("user-2")) == ("gold", "gold")
    await put(api, "gold", ["price_gold_m"])
    assert (await slug("user-1"), await slug("user-2")) == ("gold", "silver-lookup")
    await api("DELETE", "/api/plans/gold")
    assert await slug("user-1") is None
