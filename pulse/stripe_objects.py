"""How we read Stripe's JSON: pure functions over events and objects, in both API shapes (no database, no network).

Two shapes matter: from API 2025-03-31 a subscription's `current_period_end` is on its items and an
invoice's subscription is under `parent.subscription_details`; before, both are top-level fields. A
signed payload can still hold surprises (a string where an object was expected, a missing key), so
the readers never raise on an odd shape: they answer None, {} or [] instead. Stripe's Unix
timestamps become naive-UTC datetimes (`pulse.db.from_timestamp`), as every DateTimeField stores them.
"""

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pulse.db import from_timestamp

JSON = dict[str, Any]

# Event types by the object they carry (data.object): which object an event names follows from these.
SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)
INVOICE_EVENTS = frozenset({"invoice.paid", "invoice.payment_failed"})
CUSTOMER_EVENTS = frozenset({"customer.updated", "customer.deleted"})


def plain(obj: Any) -> JSON:
    """A StripeObject as the plain JSON dict Stripe sent (StripeObject.to_dict is deprecated and shallow).

    An object a request returned keeps the response's raw JSON, so nothing stripe-python coerced
    (Decimal fields since v15) changes what we read; a nested object is serialized back.
    """
    response = getattr(obj, "last_response", None)
    return response.data if response is not None else json.loads(str(obj))


# ---------------------------------------------------------------- generic readers


def stripe_id(value: Any) -> str | None:
    """The id of a Stripe reference that may be an id string or an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def dict_of(value: Any) -> JSON:
    """`value` when it is a JSON object, else {} (a signed payload may still hold surprises)."""
    return value if isinstance(value, dict) else {}


def metadata_of(obj: Any) -> JSON:
    """An object's metadata dict ({} when absent or not an object)."""
    return dict_of(dict_of(obj).get("metadata"))


def int_of(value: Any) -> int | None:
    """`value` when it is a JSON integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---------------------------------------------------------------- events


def obj_of(event: JSON) -> JSON:
    """The object an event carries (data.object)."""
    return event["data"]["object"]


def event_snapshot(created: int | None) -> int:
    """snapshot_at (ms) for a payload carried by an event created at `created` (Unix seconds)."""
    return int(created or 0) * 1000


def invoice_subscription_id(invoice: JSON) -> str | None:
    """An invoice's subscription: top-level before API 2025-03-31, under parent after."""
    sub = stripe_id(invoice.get("subscription"))
    if sub:
        return sub
    details = dict_of(dict_of(invoice.get("parent")).get("subscription_details"))
    return stripe_id(details.get("subscription"))


def subscription_id_of(event: JSON) -> str | None:
    """The subscription a payload names (only ever used to know what to re-read), or None."""
    obj, kind = obj_of(event), event["type"]
    if kind in SUBSCRIPTION_EVENTS:
        return stripe_id(obj.get("id"))
    if kind in INVOICE_EVENTS:
        return invoice_subscription_id(obj)
    if kind == "checkout.session.completed" and obj.get("mode", "subscription") == "subscription":
        return stripe_id(obj.get("subscription"))
    return None


def customer_id_of(obj: JSON) -> str | None:
    """The Stripe customer an event's object belongs to (the object itself for customer events)."""
    return stripe_id(obj.get("id") if obj.get("object") == "customer" else obj.get("customer"))


def metadatas_of(obj: JSON) -> Iterator[JSON]:
    """Every metadata dict an event's object carries: its own, its subscription details', an expanded subscription's."""
    yield metadata_of(obj)
    yield metadata_of(obj.get("subscription_details"))
    yield metadata_of(dict_of(obj.get("parent")).get("subscription_details"))
    if isinstance(obj.get("subscription"), dict):
        yield metadata_of(obj["subscription"])


# ---------------------------------------------------------------- subscriptions


def period_end(subscription: JSON) -> datetime | None:
    """current_period_end from the items (API 2025-03-31+), else the top-level field (older)."""
    items = ((subscription.get("items") or {}).get("data")) or []
    ends = [item["current_period_end"] for item in items if isinstance(item, dict) and item.get("current_period_end")]
    if ends:
        return from_timestamp(max(ends))
    return from_timestamp(subscription.get("current_period_end"))


def subscription_times(subscription: JSON) -> dict[str, Any]:
    """The Subscription columns read as they are from a Stripe subscription: Stripe's status, cancelling, times.

    Keys: stripe_status ("incomplete" when absent), cancel_at_period_end, current_period_end,
    cancel_at, canceled_at, trial_end, started_at (`created`, else `start_date`); times naive UTC.
    """
    obj = subscription
    return {
        "stripe_status": obj.get("status") or "incomplete",
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
        "current_period_end": period_end(obj),
        "cancel_at": from_timestamp(obj.get("cancel_at")),
        "canceled_at": from_timestamp(obj.get("canceled_at")),
        "trial_end": from_timestamp(obj.get("trial_end")),
        "started_at": from_timestamp(obj.get("created") or obj.get("start_date")),
    }


def pause_fields(subscription: JSON) -> dict[str, Any]:
    """pause_behavior and pause_resumes_at from Stripe's pause_collection (null when not paused)."""
    pause = dict_of(subscription.get("pause_collection"))
    behavior = pause.get("behavior")
    if not isinstance(behavior, str) or not behavior:
        return {"pause_behavior": None, "pause_resumes_at": None}
    return {"pause_behavior": behavior[:32], "pause_resumes_at": from_timestamp(int_of(pause.get("resumes_at")))}


# ---------------------------------------------------------------- subscription items and prices


def items_of(subscription: JSON) -> list[JSON]:
    """A subscription's items (items.data), objects only."""
    return [item for item in (dict_of(subscription.get("items")).get("data") or []) if isinstance(item, dict)]


def price_of(item: JSON) -> JSON:
    """The item's price object; API versions before 2018 only have the legacy `plan` object."""
    price = item.get("price")
    if isinstance(price, str):
        return {"id": price}
    return price if isinstance(price, dict) else dict_of(item.get("plan"))


def recurring_of(price: JSON) -> JSON:
    """A price's recurring terms (interval, interval_count, usage_type); a legacy plan holds them itself."""
    recurring = price.get("recurring")
    if isinstance(recurring, dict):
        return recurring
    return price if price.get("object") == "plan" or "interval" in price else {}


def licensed(item: JSON) -> bool:
    """A recurring item billed per seat, not by usage (metered add-ons are never the plan)."""
    price = price_of(item)
    if not price.get("id") or price.get("type") == "one_time":
        return False
    return recurring_of(price).get("usage_type") != "metered"


def plan_item(subscription: JSON, catalog: dict[str, str]) -> JSON | None:
    """The plan item of a Stripe subscription: licensed and in `catalog` ({price id: slug}), else the first licensed."""
    candidates = [item for item in items_of(subscription) if licensed(item)]
    for item in candidates:
        if price_of(item)["id"] in catalog:
            return item
    return candidates[0] if candidates else None


def price_ids_of(subscription: JSON) -> list[str]:
    """The price id of each of a subscription's items, in Stripe's order."""
    return [price_of(item)["id"] for item in items_of(subscription) if price_of(item).get("id")]


def unit_amount_of(price: JSON) -> int | None:
    """A price's amount in the currency's smallest unit: unit_amount, a legacy plan's amount, or unit_amount_decimal."""
    amount = int_of(price.get("unit_amount"))
    if amount is None:
        amount = int_of(price.get("amount"))  # legacy plan object
    if amount is None and isinstance(price.get("unit_amount_decimal"), str):
        try:
            amount = int(Decimal(price["unit_amount_decimal"]).to_integral_value())
        except (InvalidOperation, ValueError):
            amount = None
    return amount
