"""The simulator's subscription updates, invoices, previews and Entitlements without a server, through its
Stripe API (Simulator.dispatch) as stripe-python would call it (sandbox/subscriptions.py, invoices.py,
entitlements.py)."""

import json

import pytest

from sandbox import lifecycle
from sandbox.core import Simulator, StripeError
from tests.test_sandbox_simulator import DAY, paid_subscription

SUMMARY = "entitlements.active_entitlement_summary.updated"


def refused(sim, method, path, params):
    with pytest.raises(StripeError) as caught:
        sim.run(lambda s: s.dispatch(method, path, params))
    return caught.value.status, caught.value.body["error"]


@pytest.fixture
def sim():
    sim = Simulator()
    sim.add_price("price_team_monthly", "month", 5000)
    return sim


def test_an_update_is_validated_as_stripe_validates_it(sim):
    sub_id = paid_subscription(sim)
    item_id = sim.subscriptions[sub_id]["items"]["data"][0]["id"]
    path, version = f"subscriptions/{sub_id}", sim.version(sub_id)
    status, error = refused(sim, "POST", path, {"proration_behavior": "sometimes"})
    assert (status, error["param"], error["type"]) == (400, "proration_behavior", "invalid_request_error")
    status, error = refused(sim, "POST", path, {"items": [{"id": "si_nope", "price": "price_team_monthly"}]})
    assert (status, error["param"], error["code"]) == (400, "items[0][id]", "resource_missing")
    status, error = refused(sim, "POST", path, {"items": [{"id": item_id, "price": "price_nope"}]})
    assert (status, error["param"], error["message"]) == (400, "items[0][price]", "No such price: 'price_nope'")
    status, error = refused(sim, "POST", path, {"items": [{"id": item_id, "quantity": "two"}]})
    assert error["code"] == "parameter_invalid_integer"
    assert sim.outbox == [] and sim.version(sub_id) == version  # nothing changed
    sim.run(lambda s: s.dispatch("DELETE", path, {}))
    status, error = refused(sim, "POST", path, {"cancel_at_period_end": "true"})
    assert status == 400 and "canceled subscription" in error["message"]
    assert sim.dispatch("POST", path, {"metadata": {"note": "kept"}})["metadata"]["note"] == "kept"
    assert refused(sim, "DELETE", path, {})[0] == 400


def test_always_invoice_charges_the_prorations_now_and_create_prorations_waits_for_the_renewal(sim):
    sub_id = paid_subscription(sim)
    item_id = sim.subscriptions[sub_id]["items"]["data"][0]["id"]
    lifecycle.advance(sim, 15 * DAY)
    sim.outbox.clear()
    changed = sim.run(
        lambda s: s.dispatch(
            "POST",
            f"subscriptions/{sub_id}",
            {"items": [{"id": item_id, "price": "price_team_monthly"}], "proration_behavior": "always_invoice"},
        )
    )
    assert changed["items"]["data"][0]["price"]["id"] == "price_team_monthly"
    assert [e["type"] for e in sim.outbox] == [
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
    ]
    invoice = sim.outbox[2]["data"]["object"]
    assert invoice["billing_reason"] == "subscription_update" and 1400 <= invoice["amount_paid"] <= 1500
    details = [line["parent"]["subscription_item_details"] for line in invoice["lines"]["data"]]
    assert [d["proration"] for d in details] == [True, True] and {d["subscription_item"] for d in details} == {item_id}
    previous = sim.outbox[-1]["data"]["previous_attributes"]
    assert previous["items"]["data"][0]["price"]["id"] == "price_pro_monthly"

    # Back to pro with Stripe's default: nothing invoiced now, the credit lands on the next renewal.
    sim.outbox.clear()
    preview = sim.dispatch(
        "POST",
        "invoices/create_preview",
        {"subscription": sub_id, "subscription_details": {"items": [{"id": item_id, "price": "price_pro_monthly"}]}},
    )
    assert preview["id"].startswith("upcoming_in_") and preview["status"] == "draft"
    sim.dispatch("POST", f"subscriptions/{sub_id}", {"items": [{"id": item_id, "price": "price_pro_monthly"}]})
    assert [e["type"] for e in sim.outbox] == ["customer.subscription.updated"]
    lifecycle.advance(sim, 16 * DAY)
    renewal = sim.invoices[sim.subscriptions[sub_id]["latest_invoice"]]
    assert renewal["billing_reason"] == "subscription_cycle" and len(renewal["lines"]["data"]) == 3
    assert abs(renewal["amount_paid"] - preview["amount_due"]) <= 2 and renewal["amount_paid"] < 2000
    assert sim.subscriptions[sub_id].get("_pending") is None
    listed = sim.dispatch("GET", "invoices", {"subscription": sub_id, "limit": "2"})
    assert [i["id"] for i in listed["data"]][0] == renewal["id"] and listed["has_more"] is True
    numbers = [i["number"] for i in sim.dispatch("GET", "invoices", {"customer": renewal["customer"]})["data"]]
    assert [n.split("-")[1] for n in numbers] == ["0003", "0002", "0001"]


def test_a_failed_always_invoice_payment_makes_the_subscription_past_due(sim):
    sub_id = paid_subscription(sim, card="4000000000000341", trial_days=3)
    lifecycle.set_card(sim, sim.subscriptions[sub_id]["customer"], "ok")
    lifecycle.advance(sim, 4 * DAY)
    lifecycle.set_card(sim, sim.subscriptions[sub_id]["customer"], "fails")
    item_id = sim.subscriptions[sub_id]["items"]["data"][0]["id"]
    changed = sim.dispatch(
        "POST",
        f"subscriptions/{sub_id}",
        {"items": [{"id": item_id, "quantity": "3"}], "proration_behavior": "always_invoice"},
    )
    assert changed["status"] == "past_due" and changed["items"]["data"][0]["quantity"] == 3
    assert "invoice.payment_failed" in [e["type"] for e in sim.outbox]


def test_features_on_products_are_active_entitlements_and_their_changes_are_announced(sim):
    sub_id = paid_subscription(sim)
    customer = sim.subscriptions[sub_id]["customer"]
    feature = sim.dispatch("POST", "entitlements/features", {"name": "API", "lookup_key": "api_access"})
    assert feature["object"] == "entitlements.feature" and feature["id"].startswith("feat_test_")
    assert refused(sim, "POST", "entitlements/features", {"name": "Again", "lookup_key": "api_access"})[0] == 400
    product = sim.prices["price_pro_monthly"]["product"]
    attached = sim.run(
        lambda s: s.dispatch("POST", f"products/{product}/features", {"entitlement_feature": feature["id"]})
    )
    assert attached["object"] == "product_feature" and attached["entitlement_feature"]["lookup_key"] == "api_access"
    summary = sim.outbox[-1]
    assert summary["type"] == SUMMARY and summary["data"]["object"]["customer"] == customer
    assert [e["lookup_key"] for e in summary["data"]["object"]["entitlements"]["data"]] == ["api_access"]
    active = sim.dispatch("GET", "entitlements/active_entitlements", {"customer": customer})
    assert [(e["object"], e["feature"]) for e in active["data"]] == [("entitlements.active_entitlement", feature["id"])]
    assert refused(sim, "GET", "entitlements/active_entitlements", {})[1]["param"] == "customer"
    assert refused(sim, "GET", "products/prod_nope", {})[0] == 404

    # Nothing moves: no event. A plan change off the product, or the end of the subscription: one each.
    sim.outbox.clear()
    sim.run(lambda s: s.attach_feature("price_pro_monthly", "api_access"))
    sim.run(lambda s: lifecycle.cancel_at_period_end(s, sub_id))
    assert SUMMARY not in [e["type"] for e in sim.outbox]
    sim.run(lambda s: lifecycle.switch_price(s, sub_id, "price_team_monthly"))
    assert sim.outbox[-1]["type"] == SUMMARY and sim.outbox[-1]["data"]["object"]["entitlements"]["data"] == []
    assert sim.active_features(customer) == []
    sim.run(lambda s: s.attach_feature("price_team_monthly", "exports"))
    assert sim.active_features(customer) == ["exports"]
    sim.outbox.clear()
    sim.run(lambda s: lifecycle.advance(s, 31 * DAY))  # the scheduled cancel
    assert [e["type"] for e in sim.outbox] == ["customer.subscription.deleted", SUMMARY]

    # Features and their attachments are state like the rest: they survive a save and a load.
    copy = Simulator.from_state(json.loads(json.dumps(sim.to_state())))
    assert copy.product_features == sim.product_features and copy.features == sim.features
    listed = copy.dispatch("GET", f"products/{product}/features", {})
    assert [a["id"] for a in listed["data"]] == [attached["id"]]
    deleted = copy.dispatch("DELETE", f"products/{product}/features/{attached['id']}", {})
    assert deleted == {"id": attached["id"], "object": "product_feature", "deleted": True}
