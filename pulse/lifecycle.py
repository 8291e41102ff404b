"""Subscription lifecycle through Stripe: cancel, resume, change plan, preview a change, list invoices.

Each change is sent to Stripe, then Stripe's answer is stored at once with the webhooks' newer-wins
rule (pulse.subscriptions.upsert_subscription, snapshot = the time before the call), so the next
GET /api/subscription and the subscription.updated webhook already show it; the webhook that
follows changes nothing. The subscription acted on is the user's current one (pulse.status.current).
"""

import hashlib
import json
from typing import Any, cast

import stripe

from pulse import billing, entitlements, plans
from pulse import subscriptions as subs
from pulse.db import block, from_timestamp, isoformat, transaction
from pulse.models import Customer, Project, Subscription
from pulse.outbox import answer_of
from pulse.status import Status, current, policy_of
from pulse.stripe_objects import JSON, invoice_subscription_id, plain

PRORATION_BEHAVIORS = ("create_prorations", "none", "always_invoice")
# Stripe's request parameter -> ours, for a 400 that names the caller's field.
STRIPE_PARAMS = {
    "items[0][price]": "stripe_price_id",
    "items[0][quantity]": "quantity",
    "subscription_details[items][0][price]": "stripe_price_id",
    "subscription_details[items][0][quantity]": "quantity",
    "proration_behavior": "proration_behavior",
    "subscription_details[proration_behavior]": "proration_behavior",
    "starting_after": "starting_after",
}


class LifecycleError(Exception):
    """A request we refuse before or after Stripe: HTTP status, stable code, message, field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def stripe_field(exc: BaseException) -> str | None:
    """Our field for a Stripe invalid_request_error naming a parameter (400 invalid_field), else None."""
    if isinstance(exc, billing.StripeFailure) and exc.http_status == 400 and exc.param in STRIPE_PARAMS:
        return STRIPE_PARAMS[exc.param]
    return None


def idempotency_key(project: Project, operation: str, given: str | None, request: object) -> str | None:
    """A Stripe idempotency key from the client's Idempotency-Key: its retries reach Stripe as one request."""
    if not given:
        return None
    digest = hashlib.sha256(json.dumps([given, operation, request], sort_keys=True).encode()).hexdigest()[:32]
    return f"pulse-{operation}-{project.public_id}-{digest}"


def _options(key: str | None) -> dict[str, str] | None:
    return {"idempotency_key": key} if key else None


def target(project: Project, external_user_id: str) -> tuple[Customer, Subscription]:
    """(customer, current Subscription row) of a user; LifecycleError 404 without one. Call in a block."""
    customer = Customer.get_or_none(Customer.project == project, Customer.external_user_id == external_user_id)
    if customer is None:
        raise LifecycleError(404, "not_found", "No customer with this external_user_id.")
    rows = list(Subscription.select().where(Subscription.customer == customer))
    if not rows:
        raise LifecycleError(404, "not_found", "No subscription for this external_user_id.")
    return customer, cast(Subscription, current(rows, policy_of(project)))  # rows is not empty: never None


def _live(sub: Subscription) -> Subscription:
    if sub.status == Status.CANCELLED:
        raise LifecycleError(
            409, "subscription_ended", "The user's subscription has ended; start a new one with POST /api/checkout."
        )
    return sub


def store(project: Project, customer: Customer, obj: JSON, at: int) -> dict[str, Any] | None:
    """Store Stripe's answer (newer wins) and return the user's public answer, in one transaction."""
    with block():
        with transaction():
            subs.upsert_subscription(project, obj, at)
            return answer_of(project, Customer.get_by_id(customer.id))


async def settle(
    client: stripe.StripeClient, project: Project, customer: Customer, obj: JSON, at: int, features_moved: bool
) -> dict[str, Any] | None:
    """Store Stripe's answer; when the change can move the customer's features, re-read its active
    entitlements too. -> the public answer as stored after both (never one built before the refresh)."""
    answer = store(project, customer, obj, at)
    if not features_moved:
        return answer
    await entitlements.refresh_customer(client, project, customer.id)
    with block():
        return answer_of(project, Customer.get_by_id(customer.id))


async def cancel(
    client: stripe.StripeClient,
    project: Project,
    external_user_id: str,
    at_period_end: bool = True,
    key: str | None = None,
) -> dict[str, Any] | None:
    """Cancel at the period end (Stripe: cancel_at_period_end) or now (DELETE); -> the public answer."""
    with block():
        customer, sub = target(project, external_user_id)
    _live(sub)
    at = subs.clock_ms()
    if at_period_end:
        obj = await billing.call(
            client.v1.subscriptions.update_async,
            sub.stripe_subscription_id,
            {"cancel_at_period_end": True},
            _options(key),
        )
    else:
        obj = await billing.call(client.v1.subscriptions.cancel_async, sub.stripe_subscription_id, None, _options(key))
    # Ended now, its Product's features go with it; at the period end nothing moves yet.
    return await settle(client, project, customer, plain(obj), at, features_moved=not at_period_end)


async def resume(
    client: stripe.StripeClient, project: Project, external_user_id: str, key: str | None = None
) -> dict[str, Any] | None:
    """Undo a scheduled cancellation (cancel_at_period_end and cancel_at); -> the public answer."""
    with block():
        customer, sub = target(project, external_user_id)
    _live(sub)
    if not sub.cancel_at_period_end and sub.cancel_at is None:
        raise LifecycleError(409, "not_cancelling", "The user's subscription is not scheduled to cancel.")
    at = subs.clock_ms()
    obj = await billing.call(
        client.v1.subscriptions.update_async,
        sub.stripe_subscription_id,
        {"cancel_at_period_end": False, "cancel_at": ""},
        _options(key),
    )
    return store(project, customer, plain(obj), at)


def price_for(project: Project, stripe_price_id: str | None, plan_slug: str | None) -> str:
    """The price a change moves to: the given one, else the plan's only price in the catalog. In a block."""
    if stripe_price_id:
        if plan_slug:
            plans.check_pair(project, stripe_price_id, plan_slug)
        return stripe_price_id
    prices = plans.prices_of_slug(project, cast(str, plan_slug))  # callers give a price id, a slug or both
    if not prices:
        raise LifecycleError(
            400,
            "invalid_field",
            "No price of this plan_slug in the plan catalog (PUT /api/plans/{plan_slug}); or give stripe_price_id.",
            "plan_slug",
        )
    if len(prices) > 1:
        raise LifecycleError(
            400,
            "invalid_field",
            "This plan has several prices (e.g. monthly and yearly): give stripe_price_id.",
            "plan_slug",
        )
    return prices[0]


async def _plan_item(client: stripe.StripeClient, project: Project, sub: Subscription) -> JSON:
    obj = plain(await billing.call(client.v1.subscriptions.retrieve_async, sub.stripe_subscription_id))
    with block():
        catalog = plans.catalog_of(project, plans.price_ids_of(obj))
    item = plans.plan_item(obj, catalog)
    if item is None:
        raise LifecycleError(409, "no_plan_item", "The subscription has no licensed item to change.")
    return item


def _item_change(item: JSON, price_id: str, quantity: int | None) -> dict[str, Any]:
    change: dict[str, Any] = {"id": item["id"], "price": price_id}
    if quantity is not None:
        change["quantity"] = quantity
    return change


async def change(
    client: stripe.StripeClient,
    project: Project,
    external_user_id: str,
    *,
    price_id: str | None = None,
    plan_slug: str | None = None,
    quantity: int | None = None,
    proration_behavior: str = "create_prorations",
    key: str | None = None,
) -> dict[str, Any] | None:
    """Swap the plan item to another price (and/or quantity); -> the public answer."""
    with block():
        customer, sub = target(project, external_user_id)
        price_id = price_for(project, price_id, plan_slug)
    _live(sub)
    item = await _plan_item(client, project, sub)
    at = subs.clock_ms()
    obj = await billing.call(
        client.v1.subscriptions.update_async,
        sub.stripe_subscription_id,
        {"items": [_item_change(item, price_id, quantity)], "proration_behavior": proration_behavior},
        _options(key),
    )
    if plan_slug:
        with block():
            plans.learn_pair(project, price_id, plan_slug)
    return await settle(client, project, customer, plain(obj), at, features_moved=True)


async def preview(
    client: stripe.StripeClient,
    project: Project,
    external_user_id: str,
    *,
    price_id: str | None = None,
    plan_slug: str | None = None,
    quantity: int | None = None,
    proration_behavior: str = "create_prorations",
) -> dict[str, Any]:
    """Stripe's invoice preview of a change, nothing changed: amount due now, the next invoice, currency."""
    with block():
        customer, sub = target(project, external_user_id)
        price_id = price_for(project, price_id, plan_slug)
    _live(sub)
    item = await _plan_item(client, project, sub)
    invoice = plain(
        await billing.call(
            client.v1.invoices.create_preview_async,
            {
                "customer": customer.stripe_customer_id,
                "subscription": sub.stripe_subscription_id,
                "subscription_details": {
                    "items": [_item_change(item, price_id, quantity)],
                    "proration_behavior": proration_behavior,
                },
            },
        )
    )
    lines = [line for line in (invoice.get("lines") or {}).get("data") or [] if isinstance(line, dict)]
    proration = sum(line.get("amount") or 0 for line in lines if _is_proration(line))
    now_invoiced = proration_behavior == "always_invoice"
    return {
        "currency": invoice.get("currency"),
        "amount_due_now": invoice.get("amount_due") if now_invoiced else 0,
        "proration_amount": proration,
        "next_invoice": None
        if now_invoiced
        else {
            "amount_due": invoice.get("amount_due"),
            "total": invoice.get("total"),
            "date": isoformat(from_timestamp(invoice.get("next_payment_attempt") or invoice.get("period_end"))),
        },
        "stripe_price_id": price_id,
        "quantity": quantity,
        "proration_behavior": proration_behavior,
        "lines": [
            {
                "description": line.get("description"),
                "amount": line.get("amount"),
                "proration": _is_proration(line),
                "period_start": isoformat(from_timestamp((line.get("period") or {}).get("start"))),
                "period_end": isoformat(from_timestamp((line.get("period") or {}).get("end"))),
            }
            for line in lines
        ],
    }


def _is_proration(line: JSON) -> bool:
    # API 2025-03-31+ moved `proration` under parent.subscription_item_details.
    if "proration" in line:
        return bool(line["proration"])
    details = ((line.get("parent") or {}).get("subscription_item_details")) or {}
    return bool(details.get("proration"))


def invoice_json(invoice: JSON) -> dict[str, Any]:
    """The public JSON of a Stripe invoice: amounts in the currency's smallest unit, times ISO 8601 UTC with Z."""
    return {
        "id": invoice.get("id"),
        "number": invoice.get("number"),
        "status": invoice.get("status"),
        "amount_due": invoice.get("amount_due"),
        "amount_paid": invoice.get("amount_paid"),
        "amount_remaining": invoice.get("amount_remaining"),
        "total": invoice.get("total"),
        "currency": invoice.get("currency"),
        "created": isoformat(from_timestamp(invoice.get("created"))),
        "period_start": isoformat(from_timestamp(invoice.get("period_start"))),
        "period_end": isoformat(from_timestamp(invoice.get("period_end"))),
        "hosted_invoice_url": invoice.get("hosted_invoice_url"),
        "invoice_pdf": invoice.get("invoice_pdf"),
        "stripe_subscription_id": invoice_subscription_id(invoice),
    }


async def invoices(
    client: stripe.StripeClient,
    project: Project,
    external_user_id: str,
    limit: int = 10,
    starting_after: str | None = None,
) -> dict[str, Any]:
    """One page of the user's invoices, newest first, paged as Stripe pages (starting_after = last id)."""
    with block():
        customer = Customer.get_or_none(Customer.project == project, Customer.external_user_id == external_user_id)
    if customer is None:
        raise LifecycleError(404, "not_found", "No customer with this external_user_id.")
    if not customer.stripe_customer_id:
        return {"data": [], "has_more": False, "next_starting_after": None}
    params = {"customer": customer.stripe_customer_id, "limit": limit}
    if starting_after:
        params["starting_after"] = starting_after
    page = plain(await billing.call(client.v1.invoices.list_async, params))
    data = [invoice_json(inv) for inv in page.get("data") or [] if isinstance(inv, dict)]
    return {
        "data": data,
        "has_more": bool(page.get("has_more")),
        "next_starting_after": data[-1]["id"] if data and page.get("has_more") else None,
    }
