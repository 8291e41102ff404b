"""Subscription status (SPEC 3.3): Stripe's words to ours, access, the current-subscription rule, the public shape.

The one home of two rules that the hot path, the export, the console and the OpenAPI document share:
which of a user's subscriptions is the current one (`current` in Python, `current_order` in SQL,
both built from ACCESS_STATUSES and `has_access`), and the public JSON of a subscription
(`public_subscription`). A property test checks that the SQL and Python rankings pick the same row.
"""

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import peewee as pw

from pulse.db import isoformat


class Status(StrEnum):
    """PaymentPulse's subscription status (SPEC 3.3); `cancelled` is our spelling, Stripe's is `canceled`."""

    ACTIVE = "active"
    TRIALING = "trialing"
    CANCELLING = "cancelling"
    PAST_DUE = "past_due"
    UNPAID = "unpaid"
    CANCELLED = "cancelled"
    INCOMPLETE = "incomplete"
    PAUSED = "paused"


ACCESS_STATUSES = (Status.ACTIVE, Status.TRIALING, Status.CANCELLING)
ALL_STATUSES = tuple(Status)
_DIRECT: dict[str | None, Status] = {
    "active": Status.ACTIVE,
    "trialing": Status.TRIALING,
    "past_due": Status.PAST_DUE,
    "unpaid": Status.UNPAID,
    "canceled": Status.CANCELLED,
    "incomplete_expired": Status.CANCELLED,
    "incomplete": Status.INCOMPLETE,
    "paused": Status.PAUSED,
}
# Stripe's recurring.interval -> ours; interval_count says how many of them (3 months = quarterly).
INTERVALS = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly"}
PAUSE_BEHAVIORS = ("keep_as_draft", "mark_uncollectible", "void")


# A Subscription row: the model, or a dict of its columns (raw SQL and exports read dicts).
Row = Any


class Policy(NamedTuple):
    """A project's access settings: past_due keeps access? paused collection keeps access?"""

    past_due_has_access: bool = True
    paused_collection_has_access: bool = True


DEFAULT_POLICY = Policy()  # Stripe's own view: past_due and paused collection keep access


def policy_of(project: Any) -> Policy:
    """The project's access Policy (a Project row, or any object with its two policy fields)."""
    return Policy(bool(project.past_due_has_access), bool(project.paused_collection_has_access))


def map_status(stripe_status: str | None, cancel_at_period_end: bool | None = False, cancel_at: object = None) -> str:
    """PaymentPulse status for a Stripe subscription's status and cancellation fields."""
    if stripe_status in ("active", "trialing") and (cancel_at_period_end or cancel_at):
        return Status.CANCELLING.value
    return _DIRECT.get(stripe_status, Status.INCOMPLETE).value


def has_access(
    status: str,
    past_due_has_access: bool = True,
    pause_behavior: str | None = None,
    paused_collection_has_access: bool = True,
) -> bool:
    """Whether a subscription with this status (and pause_collection behavior, if any) grants access."""
    if pause_behavior and not paused_collection_has_access:
        return False
    if status == Status.PAST_DUE:
        return bool(past_due_has_access)
    return status in ACCESS_STATUSES


def _field(row: Row, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)


def row_has_access(row: Row, policy: Policy) -> bool:
    """has_access for a Subscription row (model or dict) under a Policy."""
    return has_access(
        _field(row, "status"),
        policy.past_due_has_access,
        _field(row, "pause_behavior"),
        policy.paused_collection_has_access,
    )


_EPOCH = datetime(1970, 1, 1)


def rank(row: Row, policy: Policy) -> tuple[bool, bool, float, int]:
    """Sort key of the current-subscription rule: access first, then the latest started, then the newest row."""
    started = _field(row, "started_at")
    return (
        not row_has_access(row, policy),
        started is None,
        -(started - _EPOCH).total_seconds() if started is not None else 0,
        -_field(row, "id"),
    )


def current(rows: Sequence[Row], policy: Policy = DEFAULT_POLICY) -> Row | None:
    """The subscription GET /api/subscription reports among one user's rows (models or dicts), or None."""
    return min(rows, key=lambda row: rank(row, policy)) if rows else None


def access_condition(subscription: Any, project: Any) -> Any:
    """SQL twin of `row_has_access`: `subscription` and `project` are models or aliases in the query."""
    granted = subscription.status.in_([s.value for s in ACCESS_STATUSES]) | (
        (subscription.status == Status.PAST_DUE.value) & (project.past_due_has_access == True)
    )  # noqa: E712
    return granted & (subscription.pause_behavior.is_null() | (project.paused_collection_has_access == True))  # noqa: E712


def current_order(subscription: Any, project: Any) -> list[Any]:
    """SQL twin of `rank`: ORDER BY terms that put the current subscription first."""
    return [
        pw.Case(None, [(access_condition(subscription, project), 0)], 1),
        subscription.started_at.desc(nulls="LAST"),
        subscription.id.desc(),
    ]


def iso_time(value: datetime | str | None) -> str | None:
    """ISO 8601 with Z for a stored time: a datetime, or the text SQLite hands back for raw SQL."""
    if value is None or isinstance(value, datetime):
        return isoformat(value)
    return value[:19].replace(" ", "T") + "Z"


# Subscription columns the public shape reads, in the hot path's SELECT order.
PUBLIC_COLUMNS = (
    "status",
    "plan_slug",
    "interval",
    "interval_count",
    "quantity",
    "stripe_price_id",
    "current_period_end",
    "cancel_at",
    "trial_end",
    "pause_behavior",
    "pause_resumes_at",
    "stripe_subscription_id",
)


def public_subscription(
    row: Row, policy: Policy, with_access: int, customer: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The public JSON of a subscription (SPEC 3.2): GET /api/subscription, and each export row's subscription.

    `row` holds PUBLIC_COLUMNS (a model or a dict); `with_access` is how many of the user's
    subscriptions grant access; `customer` (dict with external_user_id, email, stripe_customer_id)
    adds the customer fields of GET /api/subscription. Times are ISO 8601 UTC with Z.
    """
    get = row.__getitem__ if isinstance(row, dict) else row.__getattribute__
    behavior = get("pause_behavior")
    body = {} if customer is None else {"external_user_id": customer["external_user_id"], "email": customer["email"]}
    body.update(
        {
            "status": get("status"),
            "has_access": has_access(
                get("status"), policy.past_due_has_access, behavior, policy.paused_collection_has_access
            ),
            "plan_slug": get("plan_slug") or None,
            "interval": get("interval") or None,
            "interval_count": get("interval_count"),
            "quantity": get("quantity"),
            "stripe_price_id": get("stripe_price_id") or None,
            "current_period_end": iso_time(get("current_period_end")),
            "cancel_at": iso_time(get("cancel_at")),
            "trial_end": iso_time(get("trial_end")),
            "pause_collection": {"behavior": behavior, "resumes_at": iso_time(get("pause_resumes_at"))}
            if behavior
            else None,
            "subscriptions_with_access": with_access,
        }
    )
    if customer is not None:
        body["stripe_customer_id"] = customer["stripe_customer_id"]
    body["stripe_subscription_id"] = get("stripe_subscription_id")
    return body
