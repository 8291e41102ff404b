"""The simulator's own rules, without a server: Stripe's lifecycle on the clock, its state round trip,
and signed event delivery with retries (sandbox/lifecycle.py, core.py, delivery.py)."""

import asyncio
import json

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from pulse.webhooks import verify
from sandbox import delivery, lifecycle
from sandbox.core import Simulator, StripeError

DAY = 86400


def paid_subscription(sim, trial_days=None, card="4242424242424242", price="price_pro_monthly"):
    customer = sim.dispatch("POST", "customers", {"email": "ada@example.test"})
    params = {
        "mode": "subscription",
        "customer": customer["id"],
        "success_url": "https://app.test/ok",
        "line_items": [{"price": price, "quantity": "1"}],
        "metadata": {"interval": "monthly"},
        "subscription_data": {"metadata": {"pulse_project_id": "proj_x"}},
    }
    if trial_days:
        params["subscription_data"]["trial_period_days"] = str(trial_days)
    session = sim.dispatch("POST", "checkout/sessions", params)
    sub = lifecycle.pay_checkout(sim, session["id"], card)
    sim.outbox.clear()
    return sub["id"]


def test_a_renewal_that_keeps_failing_follows_stripes_schedule_to_the_default_cancel():
    sim = Simulator()
    sub_id = paid_subscription(sim, card="4000000000000341")
    period_end = sim.subscriptions[sub_id]["items"]["data"][0]["current_period_end"]
    events = lifecycle.advance(sim, 30 * DAY + 60)
    assert events == ["invoice.created", "invoice.finalized", "invoice.payment_failed", "customer.subscription.updated"]
    sub = sim.subscription(sub_id)
    assert sub["status"] == "past_due" and sub["items"]["data"][0]["current_period_start"] == period_end
    invoice = sim.invoices[sub["latest_invoice"]]
    assert invoice["next_payment_attempt"] == period_end + 3 * DAY and invoice["attempt_count"] == 1
    assert lifecycle.advance(sim, 3 * DAY) == ["invoice.payment_failed", "customer.subscription.updated"]
    assert lifecycle.advance(sim, 5 * DAY) == ["invoice.payment_failed", "customer.subscription.updated"]
    assert lifecycle.advance(sim, 7 * DAY) == ["invoice.payment_failed", "customer.subscription.deleted"]
    sub = sim.subscription(sub_id)
    assert sub["status"] == "canceled" and sub["cancellation_details"]["reason"] == "payment_failed"
    assert invoice["attempt_count"] == 4


def test_a_fixed_card_pays_the_next_retry():
    sim = Simulator()
    sub_id = paid_subscription(sim, card="4000000000000341")
    lifecycle.advance(sim, 31 * DAY)
    lifecycle.set_card(sim, sim.subscriptions[sub_id]["customer"], "ok")
    events = lifecycle.advance(sim, 3 * DAY)
    assert events[-3:] == ["invoice.paid", "invoice.payment_succeeded", "customer.subscription.updated"]
    assert sim.subscription(sub_id)["status"] == "active"


def test_trial_end_pays_or_pauses_and_resume_starts_a_period():
    sim = Simulator()
    paying = paid_subscription(sim, trial_days=7)
    cardless = paid_subscription(sim, trial_days=7)
    lifecycle.set_card(sim, sim.subscriptions[cardless]["customer"], "none")
    sim.outbox.clear()
    lifecycle.advance(sim, 8 * DAY)
    types = [(e["type"], e["data"]["object"].get("id")) for e in sim.outbox]
    assert ("customer.subscription.paused", cardless) in types
    assert not any(
        e["type"].startswith("invoice.") and e["data"]["object"]["subscription"] == cardless for e in sim.outbox
    )
    assert sim.subscription(paying)["status"] == "active" and sim.subscription(cardless)["status"] == "paused"
    paid = [e for e in sim.outbox if e["type"] == "invoice.paid"]
    assert [e["data"]["object"]["amount_paid"] for e in paid] == [2000]
    lifecycle.set_card(sim, sim.subscriptions[cardless]["customer"], "ok")
    resumed = lifecycle.resume(sim, cardless)
    assert resumed["status"] == "active" and resumed["items"]["data"][0]["current_period_start"] == sim.now()


def test_scheduled_cancel_takes_effect_at_period_end_and_resume_undoes_it():
    sim = Simulator()
    sub_id = paid_subscription(sim)
    lifecycle.cancel_at_period_end(sim, sub_id)
    lifecycle.resume(sim, sub_id)
    assert sim.subscription(sub_id)["cancel_at"] is None
    lifecycle.cancel_at_period_end(sim, sub_id)
    sim.outbox.clear()
    assert lifecycle.advance(sim, 31 * DAY) == ["customer.subscription.deleted"]
    assert sim.subscription(sub_id)["status"] == "canceled"
    with pytest.raises(StripeError):
        lifecycle.advance(sim, -1)


def test_paused_collection_voids_renewals_and_switch_keeps_known_prices():
    sim = Simulator()
    sub_id = paid_subscription(sim, card="4000000000000341")
    sim.add_price("price_team_yearly", "year", 20000, lookup_key="team")
    lifecycle.pause_collection(sim, sub_id)
    sim.outbox.clear()
    assert lifecycle.advance(sim, 31 * DAY) == [
        "invoice.created",
        "invoice.finalized",
        "invoice.voided",
        "customer.subscription.updated",
    ]
    assert sim.subscription(sub_id)["status"] == "active"
    switched = lifecycle.switch_price(sim, sub_id, "price_team_yearly")
    assert switched["items"]["data"][0]["price"]["lookup_key"] == "team"
    assert sim.outbox[-1]["data"]["previous_attributes"]["items"]["data"][0]["price"]["id"] == "price_pro_monthly"


def test_declined_card_and_a_paid_session_cannot_pay():
    sim = Simulator()
    customer = sim.dispatch("POST", "customers", {"email": "ada@example.test"})
    session = sim.dispatch(
        "POST",
        "checkout/sessions",
        {
            "mode": "subscription",
            "customer": customer["id"],
            "success_url": "https://app.test/ok",
            "line_items": [{"price": "price_pro_monthly", "quantity": "1"}],
            "metadata": {},
            "subscription_data": {"metadata": {}},
        },
    )
    with pytest.raises(lifecycle.Declined):
        lifecycle.pay_checkout(sim, session["id"], "4000000000000002")
    assert sim.subscriptions == {} and sim.session(session["id"])["status"] == "open"
    lifecycle.pay_checkout(sim, session["id"])
    with pytest.raises(StripeError):
        lifecycle.pay_checkout(sim, session["id"])
    with pytest.raises(StripeError):
        sim.dispatch("POST", f"checkout/sessions/{session['id']}/expire", {})


def test_state_round_trips_through_json_with_clock_and_idempotency():
    sim = Simulator()
    sub_id = paid_subscription(sim)
    lifecycle.advance(sim, 5 * DAY)
    status, body, replayed = sim.handle("POST", "customers", {"email": "b@x.test"}, "sk_test_k", "idem-1")
    copy = Simulator.from_state(json.loads(json.dumps(sim.to_state())))
    assert copy.subscription(sub_id) == sim.subscription(sub_id)
    assert copy.clock_offset == sim.clock_offset and copy.now() == sim.now()
    assert copy.handle("POST", "customers", {"email": "b@x.test"}, "sk_test_k", "idem-1") == (status, body, True)
    assert copy.handle("POST", "customers", {"email": "c@x.test"}, "sk_test_k", "idem-1")[0] == 400


@pytest.mark.gen_test(timeout=20)
async def test_deliveries_are_signed_in_order_and_a_failed_one_is_retried():
    secret = "whsec_delivery_test_0123456789"
    received, failures = [], {"evt_2": 2}

    class Endpoint(tornado.web.RequestHandler):
        def post(self):
            event = json.loads(self.request.body)
            received.append(
                (event["id"], verify(self.request.body, self.request.headers.get("Stripe-Signature"), secret))
            )
            if failures.get(event["id"]):
                failures[event["id"]] -= 1
                self.set_status(500)

    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/hook", Endpoint)]))
    server.add_sockets(sockets)
    try:
        url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/hook"
        events = [{"id": f"evt_{n}", "object": "event", "type": "invoice.paid"} for n in (1, 2, 3)]
        accepted = await delivery.deliver(url, secret, events, delays=(0.05, 0.05, 0.05))
        assert accepted == 2 and [r[0] for r in received] == ["evt_1", "evt_2", "evt_3"]
        for _ in range(100):
            if len(received) == 5:
                break
            await asyncio.sleep(0.02)
        assert [r[0] for r in received] == ["evt_1", "evt_2", "evt_3", "evt_2", "evt_2"]
        assert all(reason is None for _, reason in received)  # PaymentPulse's own signature check accepts each
        assert failures["evt_2"] == 0
    finally:
        server.stop()
        await server.close_all_connections()
