"""Stripe Entitlements per customer: the lookup keys of the customer's active entitlements, stored for fast checks.

Stripe is the source of truth (Features attached to Products; `entitlements.active_entitlement_summary.updated`
events; GET /v1/entitlements/active_entitlements). We store the lookup keys Stripe lists, newer wins
(CustomerState.features_at, like Subscription.snapshot_at), and answer `has_access` from the database.
A change of features is a change of the public answer: pulse.outbox sends subscription.updated.
"""

import json
from collections.abc import Iterable
from typing import Any

import peewee as pw
import stripe

from pulse import billing, outbox
from pulse.db import block, transaction, utcnow
from pulse.models import Customer, CustomerFeature, CustomerState, Project
from pulse.stripe_objects import plain

EVENT = "entitlements.active_entitlement_summary.updated"
MAX_PAGES = 20


async def active_lookup_keys(client: stripe.StripeClient, stripe_customer_id: str) -> list[str]:
    """Stripe's active entitlements of a customer -> sorted lookup keys (every page). Raises StripeFailure."""
    keys: set[str] = set()
    params: dict[str, Any] = {"customer": stripe_customer_id, "limit": 100}
    for _ in range(MAX_PAGES):
        page = plain(await billing.call(client.v1.entitlements.active_entitlements.list_async, params))
        data = [item for item in page.get("data") or [] if isinstance(item, dict)]
        keys.update(str(item["lookup_key"])[:255] for item in data if item.get("lookup_key"))
        if not page.get("has_more") or not data:
            break
        params = dict(params, starting_after=data[-1].get("id"))
    return sorted(keys)


def store(project: Project, customer_id: int, lookup_keys: Iterable[str], at_ms: int) -> bool:
    """Replace a customer's stored features unless newer ones are stored; True when stored. In a transaction."""
    state = outbox.state_row(project, customer_id)
    if state.features_at > at_ms:
        return False
    keys = sorted(set(lookup_keys))
    CustomerState.update(features=json.dumps(keys), features_at=at_ms, updated_at=utcnow()).where(
        CustomerState.id == state.id
    ).execute()
    stored = {row.lookup_key for row in CustomerFeature.select().where(CustomerFeature.customer == customer_id)}
    if stored != set(keys):
        CustomerFeature.delete().where(
            CustomerFeature.customer == customer_id, CustomerFeature.lookup_key.not_in(keys or [""])
        ).execute()
        missing = [key for key in keys if key not in stored]
        if missing:
            CustomerFeature.insert_many(
                [{"project": project.id, "customer": customer_id, "lookup_key": key} for key in missing]
            ).execute()
    outbox.customer_changed(project, customer_id)
    return True


async def refresh_customer(client: stripe.StripeClient, project: Project, customer_id: int) -> list[str] | None:
    """Re-read a customer's active entitlements from Stripe and store them (after a lifecycle change)."""
    from pulse import subscriptions as subs

    with block():
        customer = Customer.get_or_none(Customer.id == customer_id)
    if customer is None or not customer.stripe_customer_id:
        return None
    at = subs.clock_ms()
    try:
        keys = await active_lookup_keys(client, customer.stripe_customer_id)
    except billing.StripeFailure:
        return None  # the entitlements event that Stripe sends as well brings them
    with block():
        with transaction():
            store(project, customer.id, keys, at)
    return keys


def features_of(customer_id: int) -> list[str]:
    """Stored lookup keys of a customer (sorted). In a block."""
    return [
        row.lookup_key
        for row in CustomerFeature.select(CustomerFeature.lookup_key)
        .where(CustomerFeature.customer == customer_id)
        .order_by(CustomerFeature.lookup_key)
    ]


def has_feature(project_id: int, external_user_id: str, lookup_key: str) -> tuple[bool, bool]:
    """(customer found, has_access) from the database only: one indexed query. In a block."""
    row = (
        Customer.select(Customer.id, CustomerFeature.id.alias("feature_id"))
        .join(
            CustomerFeature,
            join_type=pw.JOIN.LEFT_OUTER,
            on=((CustomerFeature.customer == Customer.id) & (CustomerFeature.lookup_key == lookup_key)),
        )
        .where(Customer.project == project_id, Customer.external_user_id == external_user_id)
        .dicts()
        .first()
    )
    if row is None:
        return False, False
    return True, row["feature_id"] is not None
