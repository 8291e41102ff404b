"""Local Customer/Subscription rows from Stripe objects: one upsert, ordered by snapshot time."""

import time

import peewee

from pulse.db import database, from_timestamp, is_mysql, utcnow
from pulse import outbox, plans
from pulse.models import Customer, StripeCustomerHistory, Subscription
from pulse.status import map_status, period_end

# Outcomes of upsert_subscription, counted by sync-stripe.
CREATED, UPDATED, UNCHANGED, STALE, UNMATCHED = "created", "updated", "unchanged", "stale", "unmatched"

# Fields compared to tell "updated" from "unchanged" (snapshot/sync times always move).
_COMPARED = ("customer_id", "plan_slug", "stripe_price_id", "interval", "stripe_status", "status",
             "cancel_at_period_end", "current_period_end", "cancel_at", "canceled_at", "trial_end",
             "started_at", "interval_count", "quantity", "unit_amount", "currency", "pause_behavior",
             "pause_resumes_at", "plan_slug_fallback")


def clock_ms():
    """Snapshot clock: milliseconds since the epoch (snapshot_at's unit)."""
    return int(time.time() * 1000)


def event_snapshot(created):
    """snapshot_at for a payload carried by an event created at `created` (Unix seconds)."""
    return int(created or 0) * 1000


def transaction():
    """A write transaction; on SQLite take the write lock up front (no deferred-upgrade deadlock)."""
    if is_mysql():
        return database.atomic()
    return database.atomic("IMMEDIATE")


def _locking(query):
    # After a duplicate-key error: a locking read sees the latest committed row under MySQL's
    # REPEATABLE READ, where a plain read would still show the transaction's older snapshot.
    return query.for_update() if is_mysql() else query


def _code(exc):
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def retryable(exc):
    """A MySQL deadlock: the server rolled back at once, so the whole transaction may be retried."""
    return isinstance(exc, peewee.OperationalError) and _code(exc) == 1213


def lock_timeout(exc):
    """A lock we already waited for (MySQL lock wait timeout, SQLite busy_timeout): retrying would wait again."""
    return isinstance(exc, peewee.OperationalError) and (
        _code(exc) == 1205 or "database is locked" in str(exc).lower())


def stripe_id(value):
    """The id of a Stripe reference that may be an id string or an expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def dict_of(value):
    """`value` when it is a JSON object, else {} (a signed payload may still hold surprises)."""
    return value if isinstance(value, dict) else {}


def metadata_of(obj):
    return dict_of(dict_of(obj).get("metadata"))


def resolve_customer(project, stripe_customer_id=None, external_user_id=None, email=None):
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
                    return Customer.create(project=project, external_user_id=external_user_id,
                                           email=email or "", stripe_customer_id=link)
            except peewee.IntegrityError:
                # Created meanwhile by a concurrent delivery or checkout: use that one.
                customer = _locking(Customer.select().where(
                    Customer.project == project, Customer.external_user_id == external_user_id)).first()
    if customer is None:
        return None
    changes = {}
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


def fields_of(project, obj):
    """Subscription column values read from a Stripe subscription object (either API shape). Call in a block."""
    fields = {
        "stripe_status": obj.get("status") or "incomplete",
        "status": map_status(obj.get("status"), obj.get("cancel_at_period_end"), obj.get("cancel_at")),
        "cancel_at_period_end": bool(obj.get("cancel_at_period_end")),
        "current_period_end": period_end(obj),
        "cancel_at": from_timestamp(obj.get("cancel_at")),
        "canceled_at": from_timestamp(obj.get("canceled_at")),
        "trial_end": from_timestamp(obj.get("trial_end")),
        "started_at": from_timestamp(obj.get("created") or obj.get("start_date")),
    }
    fields.update(plans.plan_fields(project, obj, metadata_of(obj)))
    fields.update(plans.pause_fields(obj))
    return fields


def upsert_subscription(project, obj, snapshot_at, email=None):
    """Store Stripe subscription `obj` for `project` unless a newer snapshot is already stored.

    `snapshot_at` (ms) is when `obj` was true at Stripe: a fetch's start time, or an event's
    `created`. Returns one of CREATED, UPDATED, UNCHANGED, STALE, UNMATCHED. Call inside a
    transaction (see `transaction()`); it never awaits.
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
    customer = resolve_customer(project, stripe_id(obj.get("customer")), meta.get("external_user_id"),
                                email=email)
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
                Subscription.create(project=project, stripe_subscription_id=sub_id, snapshot_at=snapshot_at,
                                    synced_at=now, **fields)
            outbox.customer_changed(project, customer.id)
            return CREATED
        except peewee.IntegrityError:
            existing = _locking(Subscription.select().where(
                Subscription.project == project, Subscription.stripe_subscription_id == sub_id)).first()
            if existing is None:
                raise
    changed = any(getattr(existing, name) != value for name, value in fields.items())
    if changed:
        fields["updated_at"] = now
    # Conditional on the snapshot, so a concurrent newer write is never overwritten.
    count = (Subscription.update(snapshot_at=snapshot_at, synced_at=now, **fields)
             .where(Subscription.id == existing.id, Subscription.snapshot_at <= snapshot_at).execute())
    if not count:
        return STALE
    if changed:
        outbox.customers_changed(project, {existing.customer_id, customer.id})
    return UPDATED if changed else UNCHANGED


def mark_past_due(project, sub_id, snapshot_at):
    """Payload-only fallback for invoice.payment_failed: an access status becomes past_due."""
    marked = (Subscription.update(stripe_status="past_due", status="past_due", snapshot_at=snapshot_at,
                                  synced_at=utcnow(), updated_at=utcnow())
              .where(Subscription.project == project, Subscription.stripe_subscription_id == sub_id,
                     Subscription.snapshot_at <= snapshot_at,
                     Subscription.stripe_status.in_(("active", "trialing"))).execute())
    if marked:
        outbox.customers_changed(project, outbox.customers_of_subscriptions(
            (Subscription.project == project) & (Subscription.stripe_subscription_id == sub_id)))
    return marked


# ---------------------------------------------------------------- Stripe customers that are gone

DELETED_IN_STRIPE, UNKNOWN_TO_STRIPE = "deleted in Stripe", "unknown to Stripe"


def retired(project, stripe_customer_id):
    """Whether the project dropped this Stripe customer id (it is never linked again)."""
    return StripeCustomerHistory.select().where(StripeCustomerHistory.project == project,
                                                StripeCustomerHistory.stripe_customer_id
                                                == stripe_customer_id).exists()


def retire_stripe_customer(project, stripe_customer_id, reason, at_ms, end_subscriptions=True):
    """Unlink a Stripe customer from the project's customer, keeping the id in its history.

    With `end_subscriptions` (Stripe deleted the customer, which cancels its subscriptions), the
    customer's subscriptions not yet cancelled end `cancelled`, unless a snapshot newer than `at_ms`
    is stored, or the customer already has a new Stripe customer (the old subscriptions then get
    their own customer.subscription.deleted). Returns the Customer, or None when no customer used
    the id. Call inside a transaction.
    """
    customer = Customer.get_or_none(Customer.project == project, Customer.stripe_customer_id == stripe_customer_id)
    if customer is None:  # unlinked already, e.g. by a portal call that met Stripe's 404 first
        earlier = StripeCustomerHistory.get_or_none(StripeCustomerHistory.project == project,
                                                    StripeCustomerHistory.stripe_customer_id == stripe_customer_id)
        customer = earlier and Customer.get_by_id(earlier.customer_id)
    if customer is None:
        return None
    moved_on = customer.stripe_customer_id not in (None, stripe_customer_id)
    try:
        with database.atomic():
            StripeCustomerHistory.create(project=project, customer=customer, stripe_customer_id=stripe_customer_id,
                                         reason=reason)
    except peewee.IntegrityError:
        pass  # already recorded (a concurrent delivery, or a portal call that met the 404 first)
    now = utcnow()
    Customer.update(stripe_customer_id=None, updated_at=now).where(
        Customer.id == customer.id, Customer.stripe_customer_id == stripe_customer_id).execute()
    if end_subscriptions and not moved_on:
        (Subscription.update(stripe_status="canceled", status=map_status("canceled"), cancel_at_period_end=False,
                             canceled_at=peewee.fn.COALESCE(Subscription.canceled_at, now), snapshot_at=at_ms,
                             synced_at=now, updated_at=now)
         .where(Subscription.project == project, Subscription.customer == customer,
                Subscription.status != map_status("canceled"), Subscription.snapshot_at <= at_ms).execute())
    customer.stripe_customer_id = None
    outbox.customer_changed(project, customer.id)
    return customer


def previous_stripe_customers(customer):
    """[(stripe_customer_id, reason, ended_at)] the customer used before, newest first."""
    return [(row.stripe_customer_id, row.reason, row.ended_at) for row in StripeCustomerHistory.select().where(
        StripeCustomerHistory.customer == customer).order_by(StripeCustomerHistory.id.desc())]


def update_linked_email(project, stripe_customer_id, email):
    """Copy Stripe's email to the customer linked to `stripe_customer_id`; False when none is linked."""
    customer = Customer.get_or_none(Customer.project == project, Customer.stripe_customer_id == stripe_customer_id)
    if customer is None:
        return False
    if email and customer.email != email:
        Customer.update(email=email, updated_at=utcnow()).where(Customer.id == customer.id).execute()
        outbox.customer_changed(project, customer.id)
    return True
