"""Subscription status (SPEC 3.3): Stripe's words to ours, access, and the public shape."""

from pulse.db import from_timestamp, isoformat

ACCESS_STATUSES = ("active", "trialing", "cancelling")
ALL_STATUSES = ("active", "trialing", "cancelling", "past_due", "unpaid", "cancelled", "incomplete", "paused")
_DIRECT = {"active": "active", "trialing": "trialing", "past_due": "past_due", "unpaid": "unpaid",
           "canceled": "cancelled", "incomplete_expired": "cancelled", "incomplete": "incomplete",
           "paused": "paused"}
INTERVALS = {"month": "monthly", "year": "yearly"}


def map_status(stripe_status, cancel_at_period_end=False, cancel_at=None):
    """PaymentPulse status for a Stripe subscription's status and cancellation fields."""
    if stripe_status in ("active", "trialing") and (cancel_at_period_end or cancel_at):
        return "cancelling"
    return _DIRECT.get(stripe_status, "incomplete")


def has_access(status, past_due_has_access=True):
    """Whether a user with this status may use the paid features."""
    if status == "past_due":
        return bool(past_due_has_access)
    return status in ACCESS_STATUSES


def access_statuses(past_due_has_access=True):
    """The statuses that grant access under a project's past-due policy."""
    return ACCESS_STATUSES + (("past_due",) if past_due_has_access else ())


def period_end(subscription):
    """current_period_end from the items (API 2025-03-31+), else the top-level field (older)."""
    items = ((subscription.get("items") or {}).get("data")) or []
    ends = [item.get("current_period_end") for item in items if isinstance(item, dict) and item.get("current_period_end")]
    if ends:
        return from_timestamp(max(ends))
    return from_timestamp(subscription.get("current_period_end"))


def price_of(subscription):
    """(price id, interval) of the subscription's first item, interval as monthly/yearly."""
    items = ((subscription.get("items") or {}).get("data")) or []
    for item in items:
        price = (item or {}).get("price") or (item or {}).get("plan") or {}
        if isinstance(price, dict) and price.get("id"):
            recurring = price.get("recurring") or {}
            interval = recurring.get("interval") or price.get("interval")
            return price["id"], INTERVALS.get(interval)
    return None, None


def serialize(customer, subscription, past_due_has_access=True):
    """The public JSON shape of GET /api/subscription (and each export row's subscription)."""
    return {
        "external_user_id": customer.external_user_id,
        "email": customer.email,
        "status": subscription.status,
        "has_access": has_access(subscription.status, past_due_has_access),
        "plan_slug": subscription.plan_slug or None,
        "interval": subscription.interval or None,
        "stripe_price_id": subscription.stripe_price_id or None,
        "current_period_end": isoformat(subscription.current_period_end),
        "cancel_at": isoformat(subscription.cancel_at),
        "trial_end": isoformat(subscription.trial_end),
        "stripe_customer_id": customer.stripe_customer_id,
        "stripe_subscription_id": subscription.stripe_subscription_id,
    }
