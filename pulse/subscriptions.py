"""Local Customer/Subscription rows from Stripe objects: one upsert, ordered by snapshot time."""

import time
from datetime import datetime
from typing import Any

import peewee

from pulse import outbox, plans
from pulse.db import database, locking, utcnow
from pulse.models import Customer, Project, StripeCustomerHistory, Subscription
from pulse.status import map_status
from pulse.stripe_objects import JSON, metadata_of, pause_fields, stripe_id, subscription_times

# Outcomes of upsert_subscription, counted by sync-stripe.
CREATED, UPDATED, UNCHANGED, STALE, UNMATCHED = "created", "updated", "unchanged", "stale", "unmatched"


def clock_ms() -> int:
    """Snapshot clock: milliseconds since the epoch (snapshot_at's unit)."""
    return int(time.time() * 1000)


def resolve_customer(
    project: Project,
    stripe_customer_id: str | None = None,
    external_user_id: str | None = None,
    email: str | None = None,
) -> Customer | None:
    """The project's Customer for a Stripe customer id or external user id, created if needed.

    Returns None when neither identifies (or can create) a customer. Call inside a transaction.
    """
    customer = None
    if stripe_customer_id:
        customer = Customer.get_or_none(Customer.project == project, Customer.stripe_customer_id == stripe_customer_id)
    if customer is None and external_user_id:
        customer = Customer.get_or_none(Customer.project == project, Customer.external_user_id == external_user_id)
        if customer is None:
            try:
                link = None if stripe_customer_id and retired(project, stripe_customer_id) else stripe_customer_id
                with database.atomic():
                    return Customer.create(
                        project=project, external_user_id=external_user_id, email=email or "", stripe_customer_id=link
                    )
            except peewee.IntegrityError:
                # Created meanwhile by a concurrent delivery or checkout: use that one.
                customer = locking(
                    Customer.select().where(Customer.project == project, Customer.external_user_id == external_user_id)
                ).first()
    if customer is None:
        return None
    changes: dict[str, Any] = {}
    if stripe_customer_id and not customer.stripe_customer_id and not retired(project, stripe_customer_id):
        changes["stripe_customer_id"] = stripe_customer_id
    if email and not customer.email:
        changes["email"] = email
    if changes:
        changes["updated_at"] = utcnow()
        Customer.update(**changes).where(Customer.id == customer.id).execute()
        for name, value in changes.items():
            setattr(customer, name, value)
        outbox.customer_changed(project, customer.id)  # email and stripe_customer_id are in the answer
    return customer


def fields_of(project: Project, obj: JSON) -> dict[str, Any]:
    """Subscription column values read from a Stripe subscription object (either API shape). Call in a block."""
    fields = subscription_times(obj)
    fields["status"] = map_status(obj.get("status"), obj.get("cancel_at_period_end"), obj.get("cancel_at"))
    fields.update(plans.plan_fields(project, obj, metadata_of(obj)))
    fields.update(pause_fields(obj))
    return fields


def upsert_subscription(project: Project, obj: JSON, snapshot_at: int, email: str | None = None) -> str:
    """Store Stripe subscription `obj` for `project` unless a newer snapshot is already stored.

    `snapshot_at` (ms) is when `obj` was true at Stripe: a fetch's start time, or an event's
    `created`. Returns one of CREATED, UPDATED, UNCHANGED, STALE, UNMATCHED. Call inside a
    transaction (see `pulse.db.transaction()`); it never awaits.
    """
    sub_id = stripe_id(obj.get("id"))
    if not sub_id:
        return UNMATCHED
    meta = metadata_of(obj)
    # A plain read: a locking read of a missing row would take gap locks that deadlock concurrent
    # inserts on MySQL. The conditional UPDATE below re-checks the snapshot on the latest row.
    existing = Subscription.get_or_none(Subscription.project == project, Subscription.stripe_subscription_id == sub_id)
    if existing is not None and existing.snapshot_at > snapshot_at:
        return STALE
    customer = resolve_customer(project, stripe_id(obj.get("customer")), meta.get("external_user_id"), email=email)
    if customer is None and existing is not None:
        customer = existing.customer
    if customer is None:
        return UNMATCHED
    fields = fields_of(project, obj)
    fields["customer_id"] = customer.id
    now = utcnow()
    if existing is None:
        try:
            with database.atomic():
                Subscription.create(
                    project=project, stripe_subscription_id=sub_id, snapshot_at=snapshot_at, synced_at=now, **fields
                )
            outbox.customer_changed(project, customer.id)
            return CREATED
        except peewee.IntegrityError:
            existing = locking(
                Subscription.select().where(
                    Subscription.project == project, Subscription.stripe_subscription_id == sub_id
                )
            ).first()
            if existing is None:
                raise
    changed = any(getattr(existing, name) != value for name, value in fields.items())
    if changed:
        fields["updated_at"] = now
    # Conditional on the snapshot, so a concurrent newer write is never overwritten.
    count = (
        Subscription.update(snapshot_at=snapshot_at, synced_at=now, **fields)
        .where(Subscription.id == existing.id, Subscription.snapshot_at <= snapshot_at)
        .execute()
    )
    if not count:
        return STALE
    if changed:
        outbox.customers_changed(project, {existing.customer_id, customer.id})
    return UPDATED if changed else UNCHANGED


def mark_past_due(project: Project, sub_id: str | None, snapshot_at: int) -> int:
    """Payload-only fallback for invoice.payment_failed: an access status becomes past_due."""
    marked = (
        Subscription.update(
            stripe_status="past_due",
            status="past_due",
            snapshot_at=snapshot_at,
            synced_at=utcnow(),
            updated_at=utcnow(),
        )
        .where(
            Subscription.project == project,
            Subscription.stripe_subscription_id == sub_id,
            Subscription.snapshot_at <= snapshot_at,
            Subscription.stripe_status.in_(("active", "trialing")),
        )
        .execute()
    )
    if marked:
        outbox.customers_changed(
            project,
            outbox.customers_of_subscriptions(
                (Subscription.project == project) & (Subscription.stripe_subscription_id == sub_id)
            ),
        )
    return marked


# ---------------------------------------------------------------- Stripe customers that are gone

DELETED_IN_STRIPE, UNKNOWN_TO_STRIPE = "deleted in Stripe", "unknown to Stripe"


def retired(project: Project, stripe_customer_id: str) -> bool:
    """Whether the project dropped this Stripe customer id (it is never linked again)."""
    return (
        StripeCustomerHistory.select()
        .where(StripeCustomerHistory.project == project, StripeCustomerHistory.stripe_customer_id == stripe_customer_id)
        .exists()
    )


def retire_stripe_customer(
    project: Project, stripe_customer_id: str, reason: str, at_ms: int, end_subscriptions: bool = True
) -> Customer | None:
    """Unlink a Stripe customer from the project's customer, keeping the id in its history.

    With `end_subscriptions` (Stripe deleted the customer, which cancels its subscriptions), the
    customer's subscriptions not yet cancelled end `cancelled`, unless a snapshot newer than `at_ms`
    is stored, or the customer already has a new Stripe customer (the old subscriptions then get
    their own customer.subscription.deleted). Returns the Customer, or None when no customer used
    the id. Call inside a transaction.
    """
    customer = Customer.get_or_none(Customer.project == project, Customer.stripe_customer_id == stripe_customer_id)
    if customer is None:  # unlinked already, e.g. by a portal call that met Stripe's 404 first
        earlier = StripeCustomerHistory.get_or_none(
            StripeCustomerHistory.project == project, StripeCustomerHistory.stripe_customer_id == stripe_customer_id
        )
        customer = earlier and Customer.get_by_id(earlier.customer_id)
    if customer is None:
        return None
    moved_on = customer.stripe_customer_id not in (None, stripe_customer_id)
    try:
        with database.atomic():
            StripeCustomerHistory.create(
                project=project, customer=customer, stripe_customer_id=stripe_customer_id, reason=reason
            )
    except peewee.IntegrityError:
        pass  # already recorded (a concurrent delivery, or a portal call that met the 404 first)
    now = utcnow()
    Customer.update(stripe_customer_id=None, updated_at=now).where(
        Customer.id == customer.id, Customer.stripe_customer_id == stripe_customer_id
    ).execute()
    if end_subscriptions and not moved_on:
        (
            Subscription.update(
                stripe_status="canceled",
                status=map_status("canceled"),
                cancel_at_period_end=False,
                canceled_at=peewee.fn.COALESCE(Subscription.canceled_at, now),
                snapshot_at=at_ms,
                synced_at=now,
                updated_at=now,
            )
            .where(
                Subscription.project == project,
                Subscription.customer == customer,
                Subscription.status != map_status("canceled"),
                Subscription.snapshot_at <= at_ms,
            )
            .execute()
        )
    customer.stripe_customer_id = None
    outbox.customer_changed(project, customer.id)
    return customer


def previous_stripe_customers(customer: Customer) -> list[tuple[str, str, datetime]]:
    """[(stripe_customer_id, reason, ended_at)] the customer used before, newest first."""
    return [
        (row.stripe_customer_id, row.reason, row.ended_at)
        for row in StripeCustomerHistory.select()
        .where(StripeCustomerHistory.customer == customer)
        .order_by(StripeCustomerHistory.id.desc())
    ]


def update_linked_email(project: Project, stripe_customer_id: str, email: str) -> bool:
    """Copy Stripe's email to the customer linked to `stripe_customer_id`; False when none is linked."""
    customer = Customer.get_or_none(Customer.project == project, Customer.stripe_customer_id == stripe_customer_id)
    if customer is None:
        return False
    if email and customer.email != email:
        Customer.update(email=email, updated_at=utcnow()).where(Customer.id == customer.id).execute()
        outbox.customer_changed(project, customer.id)
    return True
