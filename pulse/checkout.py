"""POST /api/checkout as one domain call, start_checkout() (SPEC 3.2): one open Checkout Session per user."""

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import peewee

from pulse import billing, outbox, plans
from pulse import subscriptions as subs
from pulse.db import DatabaseUnavailable, block, database, transaction, utcnow
from pulse.models import CheckoutLease, Customer

log = logging.getLogger("pulse.checkout")

POLL_SECONDS = 0.1  # how often a waiting checkout looks at the lease again
HOLD_MARGIN = 2.0  # seconds a hold outlasts one Stripe call (our own database round trips)
RELEASED = datetime(2000, 1, 1)  # a released lease's expires_at: lapsed for everyone, whatever their clock
RENEW_AFTER = 1.0  # renewing only past this age keeps a hold longer than the next Stripe call (< HOLD_MARGIN)


@dataclass(frozen=True)
class CheckoutRequest:
    """A validated POST /api/checkout body; `price_id` is the tenant's `stripe_price_id`."""

    external_user_id: str
    email: str
    plan_slug: str
    price_id: str
    success_url: str
    cancel_url: str
    interval: str = "monthly"
    trial_days: int | None = None


class AlreadySubscribed(Exception):
    """The user holds a subscription with access (API: 409 already_subscribed)."""


class CheckoutBusy(Exception):
    """Another checkout for this user held the lease for longer than we waited (API: 409 checkout_in_progress)."""


async def start_checkout(project, box, config, request, client_key=None):
    """Open `request`'s Checkout Session after expiring the user's earlier open ones; returns billing.Checkout.

    Creates the user's one Stripe customer (or replaces one Stripe no longer knows, once) and stores
    it, and a changed email, only once Stripe accepted them. Checkouts of one user run one at a time,
    in every process (CheckoutLease), so at most one session of theirs is open.
    Raises StripeNotConfigured (503), AlreadySubscribed (409), CheckoutBusy (409),
    billing.StripeRefused (400 on the tenant's field), billing.StripeFailure (502).
    """
    client = billing.project_client(project, box, config)
    user = request.external_user_id
    with block():
        learnt = _check_pair(project, request)  # 400 before any Stripe call
        customer = billing.find_customer(project, user)
        _refuse_if_subscribed(project, customer)
    # Concurrent first checkouts share one Stripe customer through its idempotency key, before queueing.
    customer, stored = await _ensure_stripe_customer(client, project, request, customer)
    ours = {customer.stripe_customer_id} if stored else set()  # Stripe customers this request stored first
    hold = timedelta(seconds=_call_bound(config) + HOLD_MARGIN)
    async with _lease(project, user, hold, wait=hold.total_seconds()) as (renew, first_holder):
        replacing = None
        while True:
            with block():
                customer = billing.find_customer(project, user)
                _refuse_if_subscribed(project, customer)
            try:
                await renew()
                customer, stored = await _ensure_stripe_customer(client, project, request, customer, replacing)
                if stored:
                    ours.add(customer.stripe_customer_id)
                await _update_email(client, customer, request.email)
                key = _session_key(project, client_key, request, customer.stripe_customer_id)
                # Sessions are opened under the lease once the customer is stored: none yet for a customer this
                # request stored first, if no checkout of this user ever held the lease (issue 14: one list call).
                if not (first_holder and customer.stripe_customer_id in ours):
                    await _expire_open_sessions(client, customer.stripe_customer_id, keep=key, renew=renew)
                await renew()
                session = await billing.create_checkout(client, project, customer.stripe_customer_id, request, key)
                break
            except billing.StripeFailure as exc:
                if replacing or not exc.missing_customer or not customer.stripe_customer_id:
                    raise
                # Deleted in Stripe, or the project moved to another account or to live mode: make a new one, once.
                replacing = customer.stripe_customer_id
                with block():
                    _forget_stripe_customer(project, customer)
    if not learnt:
        with block():
            plans.learn_pair(project, request.price_id, request.plan_slug)  # only now that Stripe accepted the price
    return session


def _check_pair(project, request):
    """True when the catalog already sells the price under this plan_slug (nothing to learn); else as check_pair."""
    owner = plans.catalog_of(project, [request.price_id]).get(request.price_id)
    if owner is not None and owner != request.plan_slug:
        plans.check_pair(project, request.price_id, request.plan_slug)  # PlanConflict, with its message
    return owner == request.plan_slug


def _refuse_if_subscribed(project, customer):
    if customer is not None and billing.has_access_subscription(customer, project):
        raise AlreadySubscribed()


async def _ensure_stripe_customer(client, project, request, customer, replacing=None):
    """(The user's row with a Stripe customer, True when this call stored that customer first).

    A new customer is created with `request.email` and stored only once Stripe accepted it.
    """
    if customer is not None and customer.stripe_customer_id:
        return customer, False
    if replacing is None and customer is not None:
        # After customer.deleted the plain key would replay the deleted customer's creation at Stripe (24 h).
        with block():
            previous = subs.previous_stripe_customers(customer)
        replacing = previous[0][0] if previous else None
    user = request.external_user_id
    try:
        stripe_id = await billing.create_stripe_customer(client, project, user, request.email, replacing)
    except billing.StripeFailure as exc:
        if exc.type != "idempotency_error" or exc.http_status != 400:
            raise  # 409 is a creation still in flight under the key: the retry replays it
        # The key is bound at Stripe to a creation with another email: a concurrent first checkout with
        # another address (use its customer), or one whose process died before storing it (make ours).
        with block():
            customer = billing.find_customer(project, user)
        if customer is not None and customer.stripe_customer_id:
            return customer, False
        stripe_id = await billing.create_stripe_customer(
            client, project, user, request.email, replacing, per_email=True
        )
    with block():
        return _store_stripe_customer(project, user, request.email, stripe_id, customer)


async def _update_email(client, customer, email):
    """Give Stripe the new email first; store it only once Stripe accepted it."""
    if customer.email != email:
        await billing.update_stripe_email(client, customer.stripe_customer_id, email)
        with block():
            _store_email(customer, email)


async def _expire_open_sessions(client, stripe_customer_id, keep, renew):
    """Expire every open subscription-mode session of the customer but `keep`'s (a retry of this very request)."""
    for session in await billing.open_checkouts(client, stripe_customer_id):
        if keep and (session.get("metadata") or {}).get("pulse_checkout_key") == keep:
            continue  # Stripe replays it for the same key: expiring it would hand back a dead URL
        await renew()
        if await billing.expire_checkout(client, session["id"]) == "complete":
            raise AlreadySubscribed()  # paid while we were replacing it: the webhook brings the subscription


def _session_key(project, client_key, request, stripe_customer_id):
    """With a client Idempotency-Key, retries of the same request reach Stripe with the same key."""
    if not client_key:
        return None  # stripe-python still sends one random key, reused across its own retries
    payload = json.dumps([client_key, asdict(request), stripe_customer_id], sort_keys=True)
    return f"pulse-cs-{project.public_id}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


def _call_bound(config):
    """Seconds one Stripe call may take: every attempt times out, with stripe-python's back-off (max 5 s) between."""
    retries = config.stripe_max_retries
    return config.stripe_timeout * (retries + 1) + 5 * retries


# ---------------------------------------------------------------- the Customer row (call inside a db block)


def _store_stripe_customer(project, external_user_id, email, stripe_customer_id, found):
    """(The user's row with the Stripe customer Stripe just accepted, True when this call stored it).

    `found` is the row as last read (None: there was none): inserted if new; an id already stored wins.
    """
    if found is None:
        try:
            with database.atomic():
                created = Customer.create(
                    project=project,
                    external_user_id=external_user_id,
                    email=email,
                    stripe_customer_id=stripe_customer_id,
                )
            return created, True
        except peewee.IntegrityError:
            found = billing.find_customer(project, external_user_id)
            if found is None:
                raise
    with transaction():
        stored = (
            Customer.update(stripe_customer_id=stripe_customer_id, email=email, updated_at=utcnow())
            .where((Customer.id == found.id) & Customer.stripe_customer_id.is_null())
            .execute()
        )
        outbox.customer_changed(project, found.id)  # the answer shows the Stripe customer and email
    return Customer.get_by_id(found.id), bool(stored)


def _forget_stripe_customer(project, customer):
    """Drop a Stripe customer id Stripe no longer knows into the customer's history (never linked again),
    unless another request already replaced it."""
    stale = customer.stripe_customer_id
    with transaction():
        subs.retire_stripe_customer(project, stale, subs.UNKNOWN_TO_STRIPE, subs.clock_ms(), end_subscriptions=False)
    customer.stripe_customer_id = Customer.get_by_id(customer.id).stripe_customer_id


def _store_email(customer, email):
    with transaction():
        Customer.update(email=email, updated_at=utcnow()).where(Customer.id == customer.id).execute()
        outbox.customer_changed(customer.project_id, customer.id)
    customer.email = email


# ---------------------------------------------------------------- the per-user lease (short db blocks only)


@contextlib.asynccontextmanager
async def _lease(project, user, hold, wait):
    """Hold the user's CheckoutLease for the block, waiting up to `wait` seconds; yields (renew, first_holder).

    The hold lapses after `hold` (a crashed process frees it); renew(), called before each Stripe call,
    extends it once it is RENEW_AFTER old and raises CheckoutBusy if another request took over a lapsed hold.
    Released rows are kept (lapsed), so `first_holder` (the row was new) means no checkout of this user
    held the lease before, and so none opened a Checkout Session for a Stripe customer stored since.
    """
    token = secrets.token_hex(16)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        with block():
            first_holder = _acquire(project, user, token, hold)
        if first_holder is not None:
            break
        if loop.time() >= deadline:
            raise CheckoutBusy()
        await asyncio.sleep(POLL_SECONDS * random.uniform(0.5, 1.5))

    renewed_at = loop.time()

    async def renew():
        nonlocal renewed_at
        if loop.time() - renewed_at < RENEW_AFTER:
            return  # the hold still outlasts a whole Stripe call: spare the write
        renewed_at = loop.time()
        ours = _mine(project, user) & (CheckoutLease.token == token)
        with block():
            # MySQL counts changed rows, not matched ones: within the same second nothing changes.
            kept = (
                CheckoutLease.update(expires_at=utcnow() + hold).where(ours).execute()
                or CheckoutLease.select().where(ours).exists()
            )
        if not kept:
            raise CheckoutBusy()

    try:
        yield renew, first_holder
    finally:
        try:
            with block():
                # Lapsed, not deleted: the row tells the next holder that this user's checkouts ran before.
                CheckoutLease.update(expires_at=RELEASED).where(
                    _mine(project, user) & (CheckoutLease.token == token)
                ).execute()
        except DatabaseUnavailable:
            log.warning("could not release a checkout lease; it lapses by itself")


def _mine(project, user):
    return (CheckoutLease.project == project.id) & (CheckoutLease.external_user_id == user)


def _acquire(project, user, token, hold):
    """None while another request holds the lease; else True when the row is new (first holder ever), False."""
    now = utcnow()
    held = CheckoutLease.get_or_none(_mine(project, user))
    if held is None:
        try:
            with database.atomic():
                CheckoutLease.create(project=project.id, external_user_id=user, token=token, expires_at=now + hold)
            return True
        except peewee.IntegrityError:
            return None  # another request got there first
    if held.expires_at >= now:
        return None  # a read, not a write, while we wait: writes empty the hot path's cache
    # The holder's time ran out (its process died): take over with a compare-and-set on the lapsed row.
    taken = (
        CheckoutLease.update(token=token, expires_at=now + hold)
        .where(
            _mine(project, user) & (CheckoutLease.token == held.token) & (CheckoutLease.expires_at == held.expires_at)
        )
        .execute()
    )
    return False if taken else None
