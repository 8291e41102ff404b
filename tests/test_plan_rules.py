"""SPEC 3.3's rules at their own level: plan item, interval, plan_slug, pause_collection, access, the current row."""

from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse import db, hotpath, plans, status, stripe_objects
from pulse.models import Customer, Plan, PlanPrice, Project, Subscription
from sandbox import objects


def item(
    price_id, interval="month", *, count=1, usage="licensed", quantity=1, lookup_key=None, legacy=False, amount=2000
):
    price = objects.price(price_id, interval, amount, interval_count=count, usage_type=usage, lookup_key=lookup_key)
    if legacy:
        return {
            "id": "si_" + price_id,
            "object": "subscription_item",
            "plan": objects.legacy_plan(price),
            "quantity": quantity,
        }
    return {"id": "si_" + price_id, "object": "subscription_item", "price": price, "quantity": quantity}


def sub(*items, metadata=None, pause=None):
    return {
        "id": "sub_1",
        "items": {"object": "list", "data": list(items)},
        "metadata": metadata or {},
        "pause_collection": pause,
    }


# ---------------------------------------------------------------- the plan item


def test_metered_add_ons_are_never_the_plan_item_wherever_stripe_lists_them():
    metered = item("price_calls", usage="metered", quantity=None)
    plan = item("price_pro_yearly", "year")
    for order in ((metered, plan), (plan, metered)):
        assert stripe_objects.plan_item(sub(*order), {})["id"] == "si_price_pro_yearly"
    assert stripe_objects.plan_item(sub(metered), {}) is None
    assert plans.item_facts(None)["stripe_price_id"] == ""


def test_the_catalog_picks_the_plan_among_licensed_add_ons():
    seats_add_on = item("price_extra_storage", quantity=5)
    plan = item("price_pro_monthly", quantity=3)
    assert stripe_objects.plan_item(sub(seats_add_on, plan), {})["id"] == "si_price_extra_storage"  # first licensed
    chosen = stripe_objects.plan_item(sub(seats_add_on, plan), {"price_pro_monthly": "pro"})
    assert chosen["id"] == "si_price_pro_monthly" and plans.item_facts(chosen)["quantity"] == 3


def test_legacy_plan_objects_and_one_time_items():
    legacy = item("plan_gold", "year", count=2, legacy=True, amount=9900)
    assert plans.item_facts(stripe_objects.plan_item(sub(legacy), {})) == {
        "stripe_price_id": "plan_gold",
        "interval": "yearly",
        "interval_count": 2,
        "quantity": 1,
        "unit_amount": 9900,
        "currency": "usd",
    }
    metered_legacy = item("plan_calls", usage="metered", legacy=True)
    assert stripe_objects.plan_item(sub(metered_legacy), {}) is None
    one_time = item("price_setup_fee")
    one_time["price"]["type"], one_time["price"]["recurring"] = "one_time", None
    assert stripe_objects.plan_item(sub(one_time, legacy), {})["id"] == "si_plan_gold"


@pytest.mark.parametrize(
    "interval, count, word",
    [
        ("day", 1, "daily"),
        ("week", 2, "weekly"),
        ("month", 3, "monthly"),
        ("month", 6, "monthly"),
        ("year", 1, "yearly"),
    ],
)
def test_every_interval_and_interval_count(interval, count, word):
    facts = plans.item_facts(item("price_x", interval, count=count, quantity=7))
    assert (facts["interval"], facts["interval_count"], facts["quantity"]) == (word, count, 7)


def test_amount_from_decimal_and_unknown_interval():
    odd = item("price_odd", "fortnight")
    odd["price"]["unit_amount"], odd["price"]["unit_amount_decimal"] = None, "1250.4"
    facts = plans.item_facts(odd)
    assert (facts["interval"], facts["interval_count"], facts["unit_amount"]) == ("", None, 1250)


# ---------------------------------------------------------------- plan_slug, pause_collection, access


@pytest.fixture
def shop(db_url):
    db.bind(db_url)
    with db.block():
        yield Project.create(public_id="proj_rules", name="Rules")


def _slug(project, subscription):
    with db.block():
        return plans.plan_fields(project, subscription, subscription["metadata"])["plan_slug"]


def test_plan_slug_follows_the_current_price(shop):
    bought = {"plan_slug": "business", "stripe_price_id": "price_business_monthly"}
    assert _slug(shop, sub(item("price_business_monthly"), metadata=bought)) == "business"
    assert _slug(shop, sub(item("price_pro_monthly"), metadata=bought)) == ""  # never the old plan's slug
    assert _slug(shop, sub(item("price_pro_monthly", lookup_key="pro"), metadata=bought)) == "pro"
    with db.block():
        plans.set_prices(shop, "pro", ["price_pro_monthly", "price_pro_yearly"])
    assert _slug(shop, sub(item("price_pro_monthly", lookup_key="pro-m"), metadata=bought)) == "pro"  # catalog first


def test_checkouts_from_before_the_catalog_keep_their_slug_until_the_catalog_says_otherwise(shop):
    legacy = {"plan_slug": "business"}  # no stripe_price_id in the metadata
    assert _slug(shop, sub(item("price_any"), metadata=legacy)) == "business"
    with db.block():
        plans.set_prices(shop, "business", ["price_business_monthly"])
    assert _slug(shop, sub(item("price_any"), metadata=legacy)) == ""
    assert _slug(shop, sub(item("price_business_monthly"), metadata=legacy)) == "business"


def test_one_price_belongs_to_at_most_one_plan(shop):
    with db.block():
        plans.learn_pair(shop, "price_a", "alpha")
        plans.learn_pair(shop, "price_a", "alpha")  # the same pair again is fine
        plans.learn_pair(shop, "price_b", "alpha")
        with pytest.raises(plans.PlanConflict) as caught:
            plans.learn_pair(shop, "price_a", "beta")
        assert caught.value.field == "plan_slug"
        with pytest.raises(plans.PlanConflict) as caught:
            plans.set_prices(shop, "beta", ["price_c", "price_b"])
        assert caught.value.field == "stripe_price_ids"
        assert plans.catalog_of(shop) == {"price_a": "alpha", "price_b": "alpha"}
        assert not Plan.select().where(Plan.plan_slug == "beta").exists()
        plans.delete_plan(shop, "alpha")
        assert PlanPrice.select().count() == 0
        with pytest.raises(plans.PlanNotFound):
            plans.delete_plan(shop, "alpha")


@pytest.mark.parametrize("behavior", status.PAUSE_BEHAVIORS)
def test_pause_collection_and_the_project_setting(behavior):
    fields = stripe_objects.pause_fields(sub(pause={"behavior": behavior, "resumes_at": 1893456000}))
    assert fields == {"pause_behavior": behavior, "pause_resumes_at": datetime(2030, 1, 1)}
    unscheduled = stripe_objects.pause_fields(sub(pause={"behavior": behavior, "resumes_at": None}))
    assert unscheduled["pause_resumes_at"] is None
    assert stripe_objects.pause_fields(sub()) == {"pause_behavior": None, "pause_resumes_at": None}
    assert status.has_access("active", True, behavior) is True  # default: Stripe treats it as free service
    assert status.has_access("active", True, behavior, paused_collection_has_access=False) is False
    assert status.has_access("active", True, None, paused_collection_has_access=False) is True


def test_status_vocabulary_is_one_enum():
    assert [s.value for s in status.ALL_STATUSES] == [
        "active",
        "trialing",
        "cancelling",
        "past_due",
        "unpaid",
        "cancelled",
        "incomplete",
        "paused",
    ]
    assert status.map_status("canceled") == "cancelled" and status.map_status("weird") == "incomplete"
    assert status.map_status("trialing", cancel_at=123) == "cancelling"


# ---------------------------------------------------------------- the current row: SQL and Python agree

ROWS = st.lists(
    st.tuples(
        st.sampled_from([s.value for s in status.ALL_STATUSES]),
        st.one_of(st.none(), st.integers(0, 3)),  # started: few distinct days, ties included
        st.sampled_from([None, "void", "keep_as_draft"]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS, past_due=st.booleans(), paused=st.booleans())
def test_sql_and_python_rankings_pick_the_same_row(shop, rows, past_due, paused):
    base = datetime(2026, 1, 1)
    with db.block():
        Subscription.delete().execute()
        Customer.delete().execute()
        Project.update(past_due_has_access=past_due, paused_collection_has_access=paused).where(
            Project.id == shop.id
        ).execute()
        customer = Customer.create(project=shop, external_user_id="u", email="u@example.test")
        for i, (state, day, behavior) in enumerate(rows):
            Subscription.create(
                project=shop,
                customer=customer,
                stripe_subscription_id=f"sub_{i}",
                status=state,
                stripe_status=state,
                pause_behavior=behavior,
                started_at=None if day is None else base + timedelta(days=day),
            )
        stored = list(Subscription.select().where(Subscription.customer == customer))
        policy = status.Policy(past_due, paused)
        expected = status.current(stored, policy)
        _, body = hotpath.subscription_of(shop.id, "u")
    assert body["stripe_subscription_id"] == expected.stripe_subscription_id
    assert body["has_access"] == status.row_has_access(expected, policy)
    assert body["subscriptions_with_access"] == sum(status.row_has_access(r, policy) for r in stored)
