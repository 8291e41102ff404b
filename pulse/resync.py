"""sync-stripe: re-read a project's Stripe customers and subscriptions and repair local state."""

from collections import Counter

from pulse import billing, outbox, ownership, subscriptions as subs
from pulse.db import block, utcnow
from pulse.models import Customer
from pulse.events import plain


def _belongs(project, stripe_customer, subscription=None):
    """Whether a Stripe object is this project's, by the same rule as webhooks (pulse.ownership)."""
    with block():
        return ownership.not_owned(project, [subscription, stripe_customer], stripe_customer["id"]) is None


async def _pages(method, params):
    """Every object of a Stripe list endpoint, as plain dicts, following `starting_after`."""
    after = None
    while True:
        page = plain(await billing.call(method, params=dict(params, limit=100, **(
            {"starting_after": after} if after else {}))))
        for obj in page.get("data") or []:
            yield obj
        if not page.get("has_more") or not page.get("data"):
            return
        after = page["data"][-1]["id"]


def _repair_email(project, stripe_customer):
    email = (stripe_customer.get("email") or "")[:254]
    if not email:
        return
    with block():
        (Customer.update(email=email, updated_at=utcnow())
         .where(Customer.project == project, Customer.stripe_customer_id == stripe_customer["id"],
                Customer.email != email).execute())


async def sync_project(project, *, config, box, progress=None):
    """Upsert every subscription of the project's Stripe customers; returns outcome counts.

    Each listing is stamped with the time it was requested, so a webhook applied meanwhile (a
    later fetch) is never overwritten by it. Raises billing.StripeNotConfigured / StripeFailure.
    """
    client = billing.client_for(config, billing.secret_key_for(project, box, config))
    counts = Counter(customers=0, subscriptions=0)
    for key in (subs.CREATED, subs.UPDATED, subs.UNCHANGED, subs.STALE, subs.UNMATCHED, "skipped",
                "deleted_customers"):
        counts[key] = 0
    listed = set()
    async for stripe_customer in _pages(client.v1.customers.list_async, {}):
        listed.add(stripe_customer["id"])
        if stripe_customer.get("deleted"):
            continue
        at = subs.clock_ms()
        found = [sub async for sub in _pages(client.v1.subscriptions.list_async,
                                             {"customer": stripe_customer["id"], "status": "all"})]
        mine = [sub for sub in found if _belongs(project, stripe_customer, sub)]
        counts["skipped"] += len(found) - len(mine)
        if not mine and not _belongs(project, stripe_customer):
            continue
        counts["customers"] += 1
        for sub in mine:
            sub.setdefault("metadata", {})
            meta = subs.metadata_of(stripe_customer)
            if meta.get("external_user_id") and not sub["metadata"].get("external_user_id"):
                sub["metadata"]["external_user_id"] = meta["external_user_id"]
            with block():
                with subs.transaction():
                    outcome = subs.upsert_subscription(project, sub, at, email=stripe_customer.get("email"))
            counts[outcome] += 1
            counts["subscriptions"] += 1
        _repair_email(project, stripe_customer)
        if progress:
            progress(f"{stripe_customer['id']}: {len(mine)} subscription(s)")
    counts["deleted_customers"] = await _unlink_deleted(project, client, listed, progress)
    return dict(counts)


async def _unlink_deleted(project, client, listed, progress):
    """Apply a missed customer.deleted: a linked customer absent from the listing that Stripe shows deleted.

    A 404 (another account or mode: the project's key changed) is left alone. Returns how many were unlinked.
    """
    with block():
        linked = [cid for (cid,) in Customer.select(Customer.stripe_customer_id).where(
            Customer.project == project, Customer.stripe_customer_id.is_null(False)).tuples() if cid not in listed]
    unlinked = 0
    for stripe_customer_id in linked:
        at = subs.clock_ms()
        try:
            found = plain(await billing.call(client.v1.customers.retrieve_async, stripe_customer_id))
        except billing.StripeFailure as exc:
            if exc.code != "resource_missing":
                raise
            continue
        if not found.get("deleted"):
            continue
        with block():
            with subs.transaction():
                customer = subs.retire_stripe_customer(project, stripe_customer_id, subs.DELETED_IN_STRIPE, at)
                if customer is not None:  # the tenant hears of it as from the missed event
                    outbox.customer_deleted(project, customer, stripe_customer_id)
        unlinked += 1
        if progress:
            progress(f"{stripe_customer_id}: deleted in Stripe, unlinked")
    return unlinked
