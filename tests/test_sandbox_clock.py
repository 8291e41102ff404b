"""The simulator's clock applies each subscription's due changes in Stripe's order, in every live state
(QA #5: a trial set to cancel at its end was charged for a new period first; a past_due one never cancelled)."""

import pytest

from sandbox import lifecycle
from sandbox.core import Simulator
from tests.test_sandbox_simulator import DAY, paid_subscription

FAILS = "4000000000000341"


def invoices_of(sim, sub_id):
    return sorted((i for i in sim.invoices.values() if i["subscription"] == sub_id), key=lambda i: i["_seq"])


def ended(sim, sub_id):
    sub = sim.subscription(sub_id)
    return sub["status"], sub["ended_at"]


@pytest.mark.parametrize("how", ["cancel_at_period_end", "cancel_at"])
def test_a_trial_set_to_cancel_ends_at_its_cancel_without_an_invoice(how):
    sim = Simulator()
    sub_id = paid_subscription(sim, trial_days=7)
    trial_end = sim.subscriptions[sub_id]["trial_end"]
    cancel_at = trial_end if how == "cancel_at_period_end" else sim.now() + 3 * DAY
    params = {"cancel_at_period_end": "true"} if how == "cancel_at_period_end" else {"cancel_at": str(cancel_at)}
    sim.update_subscription(sub_id, params)
    sim.outbox.clear()
    assert lifecycle.advance(sim, 40 * DAY) == ["customer.subscription.deleted"]
    assert ended(sim, sub_id) == ("canceled", cancel_at)
    assert [i["billing_reason"] for i in invoices_of(sim, sub_id)] == ["subscription_create"]  # the trial's 0.00
    assert sim.subscription(sub_id)["items"]["data"][0]["current_period_end"] == trial_end


def test_a_trial_cancelling_after_its_end_is_charged_once_then_cancels():
    sim = Simulator()
    sub_id = paid_subscription(sim, trial_days=7)
    cancel_at = sim.subscriptions[sub_id]["trial_end"] + 10 * DAY
    sim.update_subscription(sub_id, {"cancel_at": str(cancel_at)})
    sim.outbox.clear()
    events = lifecycle.advance(sim, 60 * DAY)
    assert events[0] == "invoice.created" and events[-1] == "customer.subscription.deleted"
    assert ended(sim, sub_id) == ("canceled", cancel_at)
    assert [i["billing_reason"] for i in invoices_of(sim, sub_id)] == ["subscription_create", "subscription_cycle"]


def test_an_active_subscription_cancels_at_a_cancel_at_inside_its_period_without_renewing():
    sim = Simulator()
    sub_id = paid_subscription(sim)
    cancel_at = sim.now() + 10 * DAY
    sim.update_subscription(sub_id, {"cancel_at": str(cancel_at)})
    sim.outbox.clear()
    assert lifecycle.advance(sim, 90 * DAY) == ["customer.subscription.deleted"]
    assert ended(sim, sub_id) == ("canceled", cancel_at) and len(invoices_of(sim, sub_id)) == 1


def test_a_past_due_subscription_cancels_when_scheduled_and_is_retried_no_more():
    sim = Simulator()
    sub_id = paid_subscription(sim, card=FAILS)
    lifecycle.advance(sim, 30 * DAY + 60)
    assert sim.subscription(sub_id)["status"] == "past_due"
    cancel_at = sim.now() + DAY  # before the first retry (3 days after the failure)
    sim.update_subscription(sub_id, {"cancel_at": str(cancel_at)})
    sim.outbox.clear()
    assert lifecycle.advance(sim, 30 * DAY) == ["customer.subscription.deleted"]
    assert ended(sim, sub_id) == ("canceled", cancel_at)
    assert invoices_of(sim, sub_id)[-1]["attempt_count"] == 1


def test_an_unpaid_subscription_cancels_when_scheduled():
    sim = Simulator()
    sim.after_retries = "unpaid"
    sub_id = paid_subscription(sim, card=FAILS)
    lifecycle.advance(sim, 50 * DAY)
    assert sim.subscription(sub_id)["status"] == "unpaid"
    cancel_at = sim.now() + DAY
    sim.update_subscription(sub_id, {"cancel_at": str(cancel_at)})
    sim.outbox.clear()
    assert lifecycle.advance(sim, 5 * DAY) == ["customer.subscription.deleted"]
    assert ended(sim, sub_id) == ("canceled", cancel_at)


def test_a_subscription_paused_at_trial_end_cancels_when_scheduled():
    sim = Simulator()
    sub_id = paid_subscription(sim, trial_days=7)
    lifecycle.set_card(sim, sim.subscriptions[sub_id]["customer"], "none")
    lifecycle.advance(sim, 8 * DAY)
    assert sim.subscription(sub_id)["status"] == "paused"
    lifecycle.cancel_at_period_end(sim, sub_id)
    cancel_at = sim.subscription(sub_id)["cancel_at"]
    assert cancel_at > sim.now()
    sim.outbox.clear()
    assert lifecycle.advance(sim, 90 * DAY) == ["customer.subscription.deleted"]
    assert ended(sim, sub_id) == ("canceled", cancel_at)
