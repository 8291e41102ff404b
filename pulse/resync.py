"""sync-stripe: re-read a project's Stripe customers and subscriptions and repair local state."""

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

from pulse import billing, outbox, ownership, subscriptions
from pulse.config import Config
from pulse.db import block, transaction
from pulse.models import Customer, Project
from pulse.security import SecretBox
from pulse.stripe_objects import metadata_of, plain


def _belongs(project: Project, stripe_customer: dict[str, Any], subscription: dict[str, Any] | None = None) -> bool:
    """Whether a Stripe object is this project's, by the same rule as webhooks (pulse.ownership)."""
    with block():
        return ownership.not_owned(project, [subscription, stripe_customer], stripe_customer["id"]) is None


async def _each(method: Callable[..., Any], params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Every object of a Stripe list endpoint, as plain dicts, in pages of 100 (stripe-python's paging).

    `next_page_async` follows `has_more`/`starting_after` as `auto_paging_iter()` does; we walk
    the pages rather than the objects because a page keeps Stripe's raw JSON, and `plain()` of an
    auto-paged object would re-serialize what stripe-python coerced (Decimal fields since v15).
    Stripe errors on any page become billing.StripeFailure.
    """
    page = await billing.call(method, params=dict(params, limit=100))
    while not page.is_empty:
        for obj in plain(page).get("data") or []:
            yield obj
        page = await billing.call(page.next_page_async)


def _repair_email(project: Project, stripe_customer: dict[str, Any]) -> None:
    """Copy Stripe's email (a missed customer.updated); the answer shows it, so the tenant hears of it."""
    email = (stripe_customer.get("email") or "")[:254]
    if not email:
        return
    with block(), transaction():
        subscriptions.update_linked_email(project, stripe_customer["id"], email)


async def sync_project(
    project: Project, *, config: Config, box: SecretBox, progress: Callable[[str], object] | None = None
) -> dict[str, int]:
    """Upsert every subscription of the project's Stripe customers; returns outcome counts.

    Each listing is stamped with the time it was requested, so a webhook applied meanwhile (a
    later fetch) is never overwritten by it. Raises billing.StripeNotConfigured / StripeFailure.
    """
    client = billing.client_for(config, billing.secret_key_for(project, box, config))
    outcomes = (
        subscriptions.CREATED,
        subscriptions.UPDATED,
        subscriptions.UNCHANGED,
        subscriptions.STALE,
        subscriptions.UNMATCHED,
    )
    counts = Counter(dict.fromkeys(("customers", "subscriptions", *outcomes, "skipped", "deleted_customers"), 0))
    listed = set()
    async for stripe_customer in _each(client.v1.customers.list_async, {}):
        listed.add(stripe_customer["id"])
        if stripe_customer.get("deleted"):
            continue
        at = subscriptions.clock_ms()
        found = [
            sub
            async for sub in _each(
                client.v1.subscriptions.list_async, {"customer": stripe_customer["id"], "status": "all"}
            )
        ]
        mine = [sub for sub in found if _belongs(project, stripe_customer, sub)]
        counts["skipped"] += len(found) - len(mine)
        if not mine and not _belongs(project, stripe_customer):
            continue
        counts["customers"] += 1
        for sub in mine:
            sub.setdefault("metadata", {})
            meta = metadata_of(stripe_customer)
            if meta.get("external_user_id") and not sub["metadata"].get("external_user_id"):
                sub["metadata"]["external_user_id"] = meta["external_user_id"]
            with block():
                with transaction():
                    outcome = subscriptions.upsert_subscription(project, sub, at, email=stripe_customer.get("email"))
            counts[outcome] += 1
            counts["subscriptions"] += 1
        _repair_email(project, stripe_customer)
        if progress:
            progress(f"{stripe_customer['id']}: {len(mine)} subscription(s)")
    counts["deleted_customers"] = await _unlink_deleted(project, client, listed, progress)
    return dict(counts)


async def _unlink_deleted(
    project: Project, client: Any, listed: set[str], progress: Callable[[str], object] | None
) -> int:
    """Apply a missed customer.deleted: a linked customer absent from the listing that Stripe shows deleted.

    A 404 (another account or mode: the project's key changed) is left alone. Returns how many were unlinked.
    """
    with block():
        linked = [
            cid
            for (cid,) in Customer.select(Customer.stripe_customer_id)
            .where(Customer.project == project, Customer.stripe_customer_id.is_null(False))
            .tuples()
            if cid not in listed
        ]
    unlinked = 0
    for stripe_customer_id in linked:
        at = subscriptions.clock_ms()
        try:
            found = plain(await billing.call(client.v1.customers.retrieve_async, stripe_customer_id))
        except billing.StripeFailure as exc:
            if exc.code != "resource_missing":
                raise
            continue
        if not found.get("deleted"):
            continue
        with block():
            with transaction():
                customer = subscriptions.retire_stripe_customer(
                    project, stripe_customer_id, subscriptions.DELETED_IN_STRIPE, at
                )
                if customer is not None:  # the tenant hears of it as from the missed event
                    outbox.customer_deleted(project, customer, stripe_customer_id)
        unlinked += 1
        if progress:
            progress(f"{stripe_customer_id}: deleted in Stripe, unlinked")
    return unlinked
