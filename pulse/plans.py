"""The plan catalog (Stripe price ids <-> plan_slug) and the plan a subscription is on (SPEC 3.2, 3.3).

A subscription's plan item is its licensed recurring item whose price is in the catalog, else its
first licensed one (metered add-ons never). Its plan_slug follows that item's current price: the
catalog, then the price's `lookup_key`, then the checkout metadata only while the price is still
the one bought at checkout, else null. Checkouts teach the catalog their (price, plan_slug) pair.
"""

import functools
import operator
import re
from collections.abc import Iterable
from typing import Any, Literal, overload

import peewee as pw

from pulse import fanout
from pulse.db import database, is_mysql, isoformat, transaction, utcnow
from pulse.models import Plan, PlanPrice, Project, Subscription
from pulse.status import INTERVALS
from pulse.stripe_objects import JSON, int_of, plan_item, price_ids_of, price_of, recurring_of, unit_amount_of

SLUG_MAX = 100
# Any id Stripe accepts as a price: price_..., legacy plan_... and custom plan ids.
PRICE_ID = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]{1,255}")
_SLUG_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_PRICES = 100


class PlanConflict(ValueError):
    """A price already sold under another plan_slug (API: 400 invalid_field on `field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


class PlanNotFound(LookupError):
    """No plan with this slug in the project's catalog (API: 404)."""


def valid_slug(slug: object) -> bool:
    """True for a plan_slug of 1-100 characters without control characters."""
    return isinstance(slug, str) and 1 <= len(slug) <= SLUG_MAX and not _SLUG_BAD.search(slug)


def valid_price_id(price_id: object) -> bool:
    """True for a string Stripe may accept as a price id: 1-255 characters, no whitespace or control characters."""
    return isinstance(price_id, str) and bool(PRICE_ID.fullmatch(price_id))


# ---------------------------------------------------------------- the catalog (call inside a db block)


def catalog_of(project: Project, price_ids: Iterable[str | None] | None = None) -> dict[str, str]:
    """{stripe_price_id: plan_slug} of the project's catalog, restricted to `price_ids` when given."""
    query = PlanPrice.select(PlanPrice.stripe_price_id, Plan.plan_slug).join(Plan).where(PlanPrice.project == project)
    if price_ids is not None:
        ids = [p for p in price_ids if p]
        if not ids:
            return {}
        query = query.where(PlanPrice.stripe_price_id.in_(ids))
    return dict(query.tuples())


def _prices_of_slug(project: Project, slug: str) -> list[str]:
    return [
        p
        for (p,) in PlanPrice.select(PlanPrice.stripe_price_id)
        .join(Plan)
        .where(PlanPrice.project == project, Plan.plan_slug == slug)
        .tuples()
    ]


def prices_of_slug(project: Project, slug: str) -> list[str]:
    """The Stripe price ids of a plan in the catalog ([] when the plan is unknown)."""
    return _prices_of_slug(project, slug)


def _shape(plan: Plan, price_ids: Iterable[str]) -> dict[str, Any]:
    return {
        "plan_slug": plan.plan_slug,
        "stripe_price_ids": sorted(price_ids),
        "created_at": isoformat(plan.created_at),
        "updated_at": isoformat(plan.updated_at),
    }


def list_plans(project: Project) -> list[dict[str, Any]]:
    """Every plan of the project, by slug: [{"plan_slug", "stripe_price_ids", "created_at", "updated_at"}]."""
    prices: dict[int, list[str]] = {}
    for plan_id, price_id in (
        PlanPrice.select(PlanPrice.plan, PlanPrice.stripe_price_id).where(PlanPrice.project == project).tuples()
    ):
        prices.setdefault(plan_id, []).append(price_id)
    plans = Plan.select().where(Plan.project == project).order_by(Plan.plan_slug)
    return [_shape(plan, prices.get(plan.id, [])) for plan in plans]


@overload
def _plan(project: Project, slug: str, create: Literal[False] = False) -> Plan | None: ...
@overload
def _plan(project: Project, slug: str, create: Literal[True]) -> Plan: ...
def _plan(project: Project, slug: str, create: bool = False) -> Plan | None:
    """The project's plan `slug`, or None; with `create`, made when missing (never None then)."""
    plan = Plan.get_or_none(Plan.project == project, Plan.plan_slug == slug)
    if plan is not None or not create:
        return plan
    try:
        with database.atomic():
            return Plan.create(project=project, plan_slug=slug)
    except pw.IntegrityError:  # created meanwhile by a concurrent checkout
        return Plan.get(Plan.project == project, Plan.plan_slug == slug)


def _conflict(field: str, price_id: str, owner: str) -> PlanConflict:
    return PlanConflict(
        field,
        f"Price {price_id} already belongs to plan {owner!r} in this project's plan catalog "
        "(one price belongs to at most one plan; change it with PUT /api/plans/{plan_slug}).",
    )


def check_pair(project: Project, price_id: str, plan_slug: str) -> None:
    """Raise PlanConflict (field plan_slug) when the catalog sells `price_id` under another slug."""
    owner = catalog_of(project, [price_id]).get(price_id)
    if owner is not None and owner != plan_slug:
        raise _conflict("plan_slug", price_id, owner)


def learn_pair(project: Project, price_id: str, plan_slug: str) -> None:
    """Add a checkout's (price, plan_slug) to the catalog; PlanConflict when it contradicts it. Call in a block."""
    check_pair(project, price_id, plan_slug)
    if catalog_of(project, [price_id]):
        return
    with transaction():
        plan = _plan(project, plan_slug, create=True)
        try:
            with database.atomic():
                PlanPrice.create(project=project, plan=plan, stripe_price_id=price_id)
        except pw.IntegrityError:
            check_pair(project, price_id, plan_slug)  # a concurrent checkout won: same slug is fine
            return
        _reresolve(project, [price_id])


def set_prices(project: Project, plan_slug: str, price_ids: Iterable[str]) -> tuple[dict[str, Any], bool]:
    """Create or replace plan `plan_slug` with exactly `price_ids`; returns (plan shape, created).

    Raises PlanConflict (field stripe_price_ids) when a price belongs to another plan. Subscriptions
    on the prices that moved get their plan_slug at once. Call inside a db block.
    """
    wanted = list(dict.fromkeys(price_ids))
    with transaction():
        owners = catalog_of(project, wanted)
        for price_id in wanted:
            if owners.get(price_id, plan_slug) != plan_slug:
                raise _conflict("stripe_price_ids", price_id, owners[price_id])
        created = _plan(project, plan_slug) is None
        plan = _plan(project, plan_slug, create=True)
        before = set(_prices_of_slug(project, plan_slug))
        removed, added = before - set(wanted), [p for p in wanted if p not in before]
        if removed:
            PlanPrice.delete().where(PlanPrice.plan == plan, PlanPrice.stripe_price_id.in_(list(removed))).execute()
        for price_id in added:
            PlanPrice.create(project=project, plan=plan, stripe_price_id=price_id)
        if not created:
            plan.updated_at = utcnow()
            Plan.update(updated_at=plan.updated_at).where(Plan.id == plan.id).execute()
        _reresolve(project, list(removed) + added)
        return _shape(plan, wanted), created


def delete_plan(project: Project, plan_slug: str) -> None:
    """Remove a plan from the catalog; its prices' subscriptions fall back. Raises PlanNotFound."""
    with transaction():
        plan = _plan(project, plan_slug)
        if plan is None:
            raise PlanNotFound(plan_slug)
        prices = _prices_of_slug(project, plan_slug)
        plan.delete_instance(recursive=True)
        _reresolve(project, prices)


def _reresolve(project: Project, price_ids: list[str]) -> None:
    """Re-derive plan_slug of the project's subscriptions on `price_ids` after a catalog change."""
    if not price_ids:
        return
    mapping = catalog_of(project, price_ids)
    by_slug: dict[str, list[str]] = {}
    for price_id, slug in mapping.items():
        by_slug.setdefault(slug, []).append(price_id)
    # (rows that move, their new plan_slug): only rows whose plan_slug differs are written and announced.
    moves = [(_on(project, prices) & _differs(slug), slug) for slug, prices in by_slug.items()]
    dropped = [p for p in price_ids if p not in mapping]
    if dropped:
        fallback = pw.fn.COALESCE(Subscription.plan_slug_fallback, "")
        moves.append((_on(project, dropped) & _differs(fallback), fallback))
    # The tenant hears of each customer whose answer moved (subscription.updated); a large change through
    # a queue that the delivery loop expands in batches, so the request stays short (pulse.fanout).
    collected = fanout.collect(functools.reduce(operator.or_, (where for where, _ in moves)))
    for where, value in moves:
        Subscription.update(plan_slug=value).where(where).execute()
    fanout.announce(project, collected)


def _on(project: Project, prices: list[str]) -> Any:
    return (Subscription.project == project) & Subscription.stripe_price_id.in_(prices)


def _differs(value: Any) -> Any:
    """Rows whose plan_slug is not `value` byte for byte (MySQL's collation would find "Pro" equal to "pro ")."""
    return (pw.fn.BINARY(Subscription.plan_slug) if is_mysql() else Subscription.plan_slug) != value


# ---------------------------------------------------------------- the plan of a Stripe subscription


def item_facts(item: JSON | None) -> dict[str, Any]:
    """Column values read from the plan item (or all None without one)."""
    price = price_of(item or {})
    recurring = recurring_of(price)
    currency = price.get("currency")
    count = int_of(recurring.get("interval_count"))
    interval: Any = recurring.get("interval")
    return {
        "stripe_price_id": (price.get("id") or "")[:255],
        "interval": INTERVALS.get(interval, ""),
        "interval_count": (count or 1) if interval in INTERVALS else None,
        "quantity": int_of((item or {}).get("quantity")),
        "unit_amount": unit_amount_of(price),
        "currency": currency.lower()[:3] if isinstance(currency, str) and currency else None,
    }


def _metadata_slug(project: Project, metadata: JSON, price_id: str) -> str | None:
    """The checkout's plan_slug while the price is still the one bought at checkout, else None."""
    slug = metadata.get("plan_slug")
    if not isinstance(slug, str) or not slug:
        return None
    bought = metadata.get("stripe_price_id")
    if bought:
        return slug[:SLUG_MAX] if bought == price_id else None
    # Checkouts before the catalog did not record their price: trust the slug unless the catalog
    # knows that plan's prices and the current price is not one of them.
    known = _prices_of_slug(project, slug)
    return slug[:SLUG_MAX] if not known or price_id in known else None


def plan_fields(project: Project, subscription: JSON, metadata: JSON) -> dict[str, Any]:
    """Subscription columns from its plan item: price, interval(+count), quantity, amount, plan_slug. In a block."""
    catalog = catalog_of(project, price_ids_of(subscription))
    item = plan_item(subscription, catalog)
    fields = item_facts(item)
    price_id = fields["stripe_price_id"]
    lookup_key = price_of(item or {}).get("lookup_key")
    fallback = None
    if price_id:
        fallback = (
            lookup_key[:SLUG_MAX]
            if isinstance(lookup_key, str) and lookup_key
            else _metadata_slug(project, metadata, price_id)
        )
    fields["plan_slug_fallback"] = fallback
    fields["plan_slug"] = catalog.get(price_id) or fallback or ""
    return fields
