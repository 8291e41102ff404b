"""What happens in a simulated Stripe account outside API calls: paying on the Checkout page, the Portal's
actions, and time passing (Stripe's test clocks). Each queues the events Stripe would send, in its order.
"""

import time

from sandbox import invoices, objects
from sandbox.core import invalid, not_open

# Stripe's test cards: https://docs.stripe.com/testing
CARDS = {
    "4242424242424242": "ok",  # succeeds, and so do its renewals
    "4000000000000341": "fails",  # attaches, then every charge is declined (renewals fail)
    "4000000000000002": "declined",  # declined at checkout
}
AFTER_RETRIES = ("canceled", "unpaid", "past_due")  # Billing settings "if all retries for a payment fail"
CARD_STATES = ("ok", "fails", "none")


class Declined(Exception):
    """The card was declined (Checkout keeps the session open, as Stripe's page does)."""


def _interval_seconds(price):
    recurring = price["recurring"]
    return objects.INTERVAL_DAYS.get(recurring["interval"], 30) * recurring["interval_count"] * 86400


def set_card(sim, customer_id, state):
    """Give the customer a card that pays ("ok"), one whose charges fail ("fails"), or none."""
    if state not in CARD_STATES:
        raise invalid(f"card must be one of {', '.join(CARD_STATES)}.", "card")
    customer = sim._get(sim.customers, "customer", customer_id)
    customer["_card"] = state
    pm = None if state == "none" else "pm_" + objects.new_id("card")[5:]
    customer["invoice_settings"]["default_payment_method"] = pm
    sim.emit("customer.updated", objects.public(customer))
    return objects.public(customer)


def pay_checkout(sim, session_id, card="4242424242424242"):
    """The customer pays on the hosted page: the subscription starts (trialing when asked), its first
    invoice is paid, and Stripe's events follow. Raises Declined for a declined card."""
    session = sim._get(sim.sessions, "checkout.session", session_id)
    if session["status"] != "open":
        raise not_open(session)
    outcome = CARDS.get(card.replace(" ", ""), "declined")
    if outcome == "declined":
        raise Declined("Your card was declined.")
    if not session.get("customer"):
        customer = sim._store(sim.customers, objects.customer({"email": session.get("customer_email")}))
        session["customer"] = customer["id"]
    set_card(sim, session["customer"], outcome)
    sub = sim.complete_checkout(session_id)
    stored = sim.subscriptions[sub["id"]]
    stored["default_payment_method"] = sim.customers[session["customer"]]["invoice_settings"]["default_payment_method"]
    item = stored["items"]["data"][0]
    period = (item["current_period_start"], item["current_period_end"])
    items = [(entry["id"], entry["price"], entry["quantity"]) for entry in stored["items"]["data"]]
    sim.emit_subscription("customer.subscription.created", sub["id"])
    lines = invoices.period_lines(stored, items, period, trial=stored["status"] == "trialing")
    inv = sim.open_invoice(sub["id"], "subscription_create", lines, *period)
    sim.charge(inv)
    amount = inv["amount_due"]
    session.update(invoice=inv["id"], amount_total=amount, amount_subtotal=amount, currency=stored["currency"])
    sim.emit("checkout.session.completed", objects.public(session))
    return sim.subscription(sub["id"])


# ---------------------------------------------------------------- Customer Portal actions


def switch_price(sim, sub_id, price_id):
    sub = sim._get(sim.subscriptions, "subscription", sub_id)
    item = sub["items"]["data"][0]
    sim._price(price_id, item["price"]["recurring"]["interval"])
    return sim.update_subscription(sub_id, {"items": [{"id": item["id"], "price": price_id}]})


def cancel_at_period_end(sim, sub_id):
    return sim.update_subscription(sub_id, {"cancel_at_period_end": "true"})


def resume(sim, sub_id):
    """Undo a scheduled cancel, or resume a subscription paused at trial end."""
    sub = sim._get(sim.subscriptions, "subscription", sub_id)
    if sub["status"] == "paused":
        now = sim.now()
        item = sub["items"]["data"][0]
        item.update(current_period_start=now, current_period_end=now + _interval_seconds(item["price"]))
        return sim.resume_paused(sub_id)
    return sim.update_subscription(sub_id, {"cancel_at_period_end": "false"})


def pause_collection(sim, sub_id, paused=True):
    return sim.update_subscription(sub_id, {"pause_collection": {"behavior": "void"} if paused else ""})


PORTAL_ACTIONS = {
    "cancel": cancel_at_period_end,
    "resume": resume,
    "pause_collection": pause_collection,
    "unpause_collection": lambda sim, sub_id: pause_collection(sim, sub_id, paused=False),
    "cancel_now": lambda sim, sub_id: sim.cancel_now(sub_id),
}


# ---------------------------------------------------------------- the clock


def _due(sub):
    """(when, what) of the subscription's next scheduled change, or None.

    Every live state has its own next step (trial end, a retry, a renewal); a scheduled cancel due no later
    wins over it, as at Stripe: a trial set to cancel at its end ends without an invoice, and a past_due,
    unpaid or paused subscription still cancels when it was told to."""
    item = sub["items"]["data"][0]
    status = sub["status"]
    steps = []
    if sub["cancel_at"] and status in ("trialing", "active", "past_due", "unpaid", "paused"):
        steps.append((sub["cancel_at"], 0, "cancel"))
    if status == "trialing" and sub["trial_end"]:
        steps.append((sub["trial_end"], 1, "trial_end"))
    if status == "past_due" and sub.get("_retry_at"):
        steps.append((sub["_retry_at"], 1, "retry"))
    if status == "active":
        steps.append((item["current_period_end"], 1, "renew"))
    if not steps:
        return None
    when, _, what = min(steps)
    return when, what


def _renew(sim, sub_id):
    """A new period starts at the end of the current one; its invoice is charged (unless collection is paused)."""
    sub = sim.subscriptions[sub_id]
    item = sub["items"]["data"][0]
    start = item["current_period_end"]
    end = start + _interval_seconds(item["price"])
    for each in sub["items"]["data"]:
        each.update(current_period_start=start, current_period_end=end)
    if sub["status"] == "trialing":
        card = sim.card_of(sub["customer"])
        if card == "none":  # trial_settings.end_behavior.missing_payment_method = "pause"
            before_status = sub["status"]
            sub["status"] = "paused"
            sub["_version"] += 1
            return before_status, None
        sub["status"] = "active"
    sub["_version"] += 1
    inv = sim.open_invoice(sub_id, "subscription_cycle", sim.renewal_lines(sub, (start, end)), start, end)
    if sub["pause_collection"]:
        inv.update(status="void")
        inv["status_transitions"]["voided_at"] = sim.now()
        sim.emit("invoice.voided", objects.public(inv))
        return None, None
    return None, inv


def _step(sim, sub_id, what):
    sub = sim.subscriptions[sub_id]
    before = sim.subscription(sub_id)
    if what == "cancel":
        sub.update(status="canceled", ended_at=sim.now(), _version=sub["_version"] + 1)
        sub["cancellation_details"] = dict(sub["cancellation_details"], reason="cancellation_requested")
        sim.emit_subscription("customer.subscription.deleted", sub_id, before)
        return
    if what == "retry":
        inv = sim.invoices[sub["_open_invoice"]]
        kind = sim.settle(sub_id, inv, sub.get("_failures", 0))
    else:
        paused_from, inv = _renew(sim, sub_id)
        if paused_from:
            sim.emit_subscription("customer.subscription.paused", sub_id, before)
        kind = sim.settle(sub_id, inv, 0) if inv else "updated"
    sub["_version"] += 1
    sim.emit_subscription(f"customer.subscription.{kind}", sub_id, before)


def advance(sim, seconds):
    """Move the account's clock `seconds` ahead, applying every scheduled change on the way in time order.
    Returns the types of the events it queued."""
    if seconds < 0:
        raise invalid("A test clock can only move forward.", "seconds")
    first = len(sim.outbox)
    target = sim.now() + int(seconds)
    for _ in range(10000):  # bounded: a daily price over a century is still fewer steps
        pending = [(due[0], sub_id, due[1]) for sub_id, sub in sim.subscriptions.items() if (due := _due(sub))]
        pending = [entry for entry in pending if entry[0] <= target]
        if not pending:
            break
        when, sub_id, what = min(pending)
        sim.clock_offset = max(sim.clock_offset, when - int(time.time()))
        _step(sim, sub_id, what)
    sim.clock_offset = target - int(time.time())
    return [event["type"] for event in sim.outbox[first:]]
