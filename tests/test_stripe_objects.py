"""The Stripe readers (pulse.stripe_objects) on Stripe's own example objects, in both API shapes, without a database."""

import json
from datetime import UTC, datetime

import pytest
import stripe

from pulse import stripe_objects as so
from tests import fake_stripe_objects as objects
from tests.stripe_events import NEW_API, OLD_API, customer_object, event, fixture, invoice

PERIOD_END = 1893456000  # 2030-01-01T00:00:00Z


def subscription_in(api_version, **changes):
    """Stripe's example subscription, its period where `api_version` puts it (items from 2025-03-31, else top-level)."""
    sub = fixture("subscription")
    sub.update(changes)
    item = sub["items"]["data"][0]
    item["current_period_end"] = PERIOD_END
    return objects.render_subscription(sub, api_version)


@pytest.mark.parametrize("api_version", [OLD_API, NEW_API])
def test_period_end_is_read_where_each_api_version_puts_it(api_version):
    sub = subscription_in(api_version)
    assert ("current_period_end" in sub) == (api_version == OLD_API)
    assert so.period_end(sub) == datetime(2030, 1, 1)


def test_period_end_takes_the_latest_item_and_ignores_odd_items():
    sub = {"items": {"data": [{"current_period_end": 100}, "junk", {"current_period_end": PERIOD_END}, {}]}}
    assert so.period_end(sub) == datetime(2030, 1, 1)
    assert so.period_end({"items": None, "current_period_end": None}) is None


@pytest.mark.parametrize("api_version", [OLD_API, NEW_API])
def test_an_invoice_names_its_subscription_in_both_shapes(api_version):
    sub = {"id": "sub_inv", "customer": "cus_inv", "metadata": {"pulse_project_id": "p_1"}}
    inv = invoice(sub, api_version)
    assert so.invoice_subscription_id(inv) == "sub_inv"
    evt = event("invoice.payment_failed", inv, api_version)
    assert so.subscription_id_of(evt) == "sub_inv"
    assert so.customer_id_of(so.obj_of(evt)) == "cus_inv"
    assert {"pulse_project_id": "p_1"} in list(so.metadatas_of(inv))


def test_stripes_example_invoice_under_a_quote_names_the_subscription_of_its_details():
    inv = fixture("invoice")  # parent.type quote_details, subscription_details.subscription "subscription"
    assert so.invoice_subscription_id(inv) == "subscription"
    inv["subscription"] = {"id": "sub_expanded", "object": "subscription"}
    assert so.invoice_subscription_id(inv) == "sub_expanded"


def test_which_subscription_and_customer_an_event_names():
    sub = subscription_in(NEW_API)
    assert so.subscription_id_of(event("customer.subscription.updated", sub)) == sub["id"]
    assert so.customer_id_of(sub) == sub["customer"]
    session = fixture("checkout.session")
    session.update(mode="subscription", subscription={"id": "sub_from_session"}, customer="cus_s")
    assert so.subscription_id_of(event("checkout.session.completed", session)) == "sub_from_session"
    session["mode"] = "payment"
    assert so.subscription_id_of(event("checkout.session.completed", session)) is None
    cus = customer_object("cus_self", "a@example.test")
    assert so.customer_id_of(cus) == "cus_self"  # a customer event's object is the customer itself
    assert so.subscription_id_of(event("customer.updated", cus)) is None


@pytest.mark.parametrize(
    "value, expected",
    [
        ("cus_1", "cus_1"),
        ({"id": "cus_2", "object": "customer"}, "cus_2"),
        ("", None),
        (None, None),
        (7, None),
        ({"id": 7}, None),
        (["cus_1"], None),
    ],
)
def test_stripe_id_accepts_an_id_or_an_expanded_object_and_nothing_else(value, expected):
    assert so.stripe_id(value) == expected


def test_readers_answer_empty_for_odd_shapes_instead_of_raising():
    assert so.metadata_of(None) == {} and so.metadata_of({"metadata": "x"}) == {} and so.metadata_of("x") == {}
    assert so.dict_of(["a"]) == {} and so.int_of(True) is None and so.int_of(3) == 3 and so.int_of("3") is None
    assert so.items_of({"items": {"data": ["x", None, {"id": "si"}]}}) == [{"id": "si"}]
    assert so.price_ids_of({"items": "nope"}) == []
    assert so.plan_item({}, {}) is None
    assert so.pause_fields({"pause_collection": {"behavior": 5}}) == {"pause_behavior": None, "pause_resumes_at": None}


@pytest.mark.parametrize("api_version", [OLD_API, NEW_API])
def test_subscription_times_read_stripes_example_subscription(api_version):
    sub = subscription_in(
        api_version, cancel_at=PERIOD_END, cancel_at_period_end=False, canceled_at=None, trial_end=None
    )
    times = so.subscription_times(sub)
    assert times == {
        "stripe_status": "active",
        "cancel_at_period_end": False,
        "current_period_end": datetime(2030, 1, 1),
        "cancel_at": datetime(2030, 1, 1),
        "canceled_at": None,
        "trial_end": None,
        "started_at": datetime.fromtimestamp(sub["created"], UTC).replace(tzinfo=None),
    }
    assert so.subscription_times({"start_date": PERIOD_END})["started_at"] == datetime(2030, 1, 1)
    assert so.subscription_times({})["stripe_status"] == "incomplete"


def test_the_plan_item_and_its_price_on_stripes_example_objects():
    sub = fixture("subscription")
    item = sub["items"]["data"][0]  # carries both `price` and the legacy `plan`: the price wins
    assert so.price_of(item)["id"] == "price_1PgafmB7WZ01zgkW6dKueIc5"
    assert so.recurring_of(so.price_of(item))["interval"] == "month"
    assert so.licensed(item) and so.plan_item(sub, {}) is item
    assert so.price_ids_of(sub) == ["price_1PgafmB7WZ01zgkW6dKueIc5"]
    assert so.unit_amount_of(so.price_of(item)) == 2000
    legacy = {"plan": fixture("plan")}
    assert so.recurring_of(so.price_of(legacy)) is so.price_of(legacy)  # a plan holds its own interval
    assert so.unit_amount_of({"unit_amount": None, "unit_amount_decimal": "1250.4"}) == 1250
    assert so.unit_amount_of({"unit_amount_decimal": "n/a"}) is None
    assert so.price_of({"price": "price_bare"}) == {"id": "price_bare"}


def test_plain_gives_stripes_raw_json_for_a_response_and_a_nested_object():
    body = fixture("subscription")
    response = stripe.StripeResponse(json.dumps(body), 200, {})
    obj = stripe.Subscription.construct_from(body, "sk_test_x", last_response=response)
    item = obj["items"]["data"][0]["price"]
    item["unit_amount_decimal"] = "2000.0"  # what a nested object holds is serialized back as it stands
    assert so.plain(obj) == body  # the response's own JSON, whatever stripe-python did to the object
    assert item.last_response is None and so.plain(item)["unit_amount_decimal"] == "2000.0"
    assert so.plain(item)["recurring"] == body["items"]["data"][0]["price"]["recurring"]
