"""GET /api/subscription: one query over stored rows, no Stripe call."""

from datetime import datetime
from urllib.parse import quote

import pytest

from pulse import db
from pulse.models import Project
from tests.billing_support import add_customer, add_subscription
from tests.support import body_of


def read(api, user):
    return api("GET", "/api/subscription?external_user_id=" + quote(user, safe=""))


@pytest.mark.gen_test
async def test_full_body(api, project):
    customer = add_customer(project.project, "user-1", email="ada@example.test", stripe_customer_id="cus_1")
    add_subscription(
        customer,
        "trialing",
        stripe_subscription_id="sub_1",
        plan_slug="team",
        interval="yearly",
        stripe_price_id="price_team_y",
        current_period_end=datetime(2026, 12, 1, 10, 0, 0),
        trial_end=datetime(2026, 12, 1, 10, 0, 0),
        cancel_at=None,
        interval_count=1,
        quantity=3,
    )
    response = await read(api, "user-1")
    assert response.code == 200
    assert body_of(response) == {
        "external_user_id": "user-1",
        "email": "ada@example.test",
        "status": "trialing",
        "has_access": True,
        "plan_slug": "team",
        "interval": "yearly",
        "interval_count": 1,
        "quantity": 3,
        "stripe_price_id": "price_team_y",
        "current_period_end": "2026-12-01T10:00:00Z",
        "cancel_at": None,
        "trial_end": "2026-12-01T10:00:00Z",
        "pause_collection": None,
        "subscriptions_with_access": 1,
        "stripe_customer_id": "cus_1",
        "stripe_subscription_id": "sub_1",
        "features": [],
    }


@pytest.mark.gen_test
async def test_cancelling_keeps_access(api, project):
    customer = add_customer(project.project, "user-1")
    add_subscription(customer, "active", cancel_at=datetime(2027, 1, 1))
    body = body_of(await read(api, "user-1"))
    assert body["status"] == "cancelling" and body["has_access"] is True
    assert body["cancel_at"] == "2027-01-01T00:00:00Z"


@pytest.mark.gen_test
async def test_missing_and_bad_parameter(api):
    response = await api("GET", "/api/subscription")
    assert response.code == 422
    assert body_of(response)["error"]["field"] == "external_user_id"
    response = await api("GET", "/api/subscription?external_user_id=" + "x" * 256)
    assert response.code == 400 and body_of(response)["error"]["code"] == "invalid_field"


@pytest.mark.gen_test
async def test_unknown_user_and_no_subscription_are_404(api, project, make_project):
    add_customer(project.project, "no-sub")
    other = make_project("Other")
    add_subscription(add_customer(other.project, "theirs"), "active")
    for user in ("nobody", "no-sub", "theirs"):
        response = await read(api, user)
        assert response.code == 404, user
        assert body_of(response)["error"]["code"] == "not_found"


@pytest.mark.gen_test
async def test_access_wins_over_a_newer_subscription_without_access(api, project):
    customer = add_customer(project.project, "user-1")
    add_subscription(customer, "active", started_days_ago=300, stripe_subscription_id="sub_old_active")
    add_subscription(customer, "canceled", started_days_ago=1, stripe_subscription_id="sub_new_canceled")
    add_subscription(customer, "incomplete", started_days_ago=0, stripe_subscription_id="sub_newest_incomplete")
    assert body_of(await read(api, "user-1"))["stripe_subscription_id"] == "sub_old_active"


@pytest.mark.gen_test
async def test_most_recent_wins_among_equals(api, project):
    customer = add_customer(project.project, "user-1")
    add_subscription(customer, "canceled", started_days_ago=90, stripe_subscription_id="sub_a")
    add_subscription(customer, "canceled", started_days_ago=5, stripe_subscription_id="sub_b")
    add_subscription(customer, "unpaid", started_days_ago=40, stripe_subscription_id="sub_c")
    body = body_of(await read(api, "user-1"))
    assert body["stripe_subscription_id"] == "sub_b" and body["has_access"] is False
    add_subscription(customer, "active", started_days_ago=60, stripe_subscription_id="sub_d")
    add_subscription(customer, "trialing", started_days_ago=2, stripe_subscription_id="sub_e")
    assert body_of(await read(api, "user-1"))["stripe_subscription_id"] == "sub_e"


@pytest.mark.gen_test
@pytest.mark.parametrize("policy", [True, False])
async def test_past_due_follows_project_policy(api, project, policy):
    with db.block():
        Project.update(past_due_has_access=policy).where(Project.id == project.project.id).execute()
    customer = add_customer(project.project, "user-1")
    add_subscription(customer, "canceled", started_days_ago=1, stripe_subscription_id="sub_canceled")
    add_subscription(customer, "past_due", started_days_ago=30, stripe_subscription_id="sub_past_due")
    body = body_of(await read(api, "user-1"))
    assert body["has_access"] is policy
    assert body["stripe_subscription_id"] == ("sub_past_due" if policy else "sub_canceled")


@pytest.mark.gen_test
async def test_any_string_id(api, project):
    user = "ünï/cøde & ?id=1 🙂"
    add_subscription(add_customer(project.project, user), "active")
    response = await read(api, user)
    assert response.code == 200 and body_of(response)["external_user_id"] == user


@pytest.mark.gen_test
async def test_requires_api_key(api):
    response = await api("GET", "/api/subscription?external_user_id=x", key="")
    assert response.code == 401


@pytest.mark.gen_test
async def test_ids_are_exact(api, project):
    # On MySQL too: another case or a trailing space is another user, never this one's subscription.
    add_subscription(add_customer(project.project, "user-1"), "active")
    for other in ("User-1", "user-1 ", "USER-1"):
        assert (await read(api, other)).code == 404, repr(other)
    assert (await read(api, "user-1")).code == 200
