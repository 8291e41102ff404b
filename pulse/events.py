"""What a Stripe event means: the objects it names, its project, Stripe's current state, applying it."""

import json

from pulse import billing, projects, subscriptions as subs
from pulse.db import utcnow
from pulse.models import Customer, Project

PROCESSED, IGNORED = "processed", "ignored"
SUBSCRIPTION_EVENTS = {"customer.subscription.created", "customer.subscription.updated",
                       "customer.subscription.deleted", "customer.subscription.paused",
                       "customer.subscription.resumed"}
INVOICE_EVENTS = {"invoice.paid", "invoice.payment_failed"}
HANDLED = SUBSCRIPTION_EVENTS | INVOICE_EVENTS | {"checkout.session.completed", "customer.updated"}


def obj_of(event):
    return event["data"]["object"]


def invoice_subscription_id(invoice):
    """An invoice's subscription: top-level before API 2025-03-31, under parent after."""
    sub = subs.stripe_id(invoice.get("subscription"))
    if sub:
        return sub
    details = subs.dict_of(subs.dict_of(invoice.get("parent")).get("subscription_details"))
    return subs.stripe_id(details.get("subscription"))


def subscription_id_of(event):
    """The subscription an event is about, or None."""
    obj, kind = obj_of(event), event["type"]
    if kind in SUBSCRIPTION_EVENTS:
        return subs.stripe_id(obj.get("id"))
    if kind in INVOICE_EVENTS:
        return invoice_subscription_id(obj)
    if kind == "checkout.session.completed" and obj.get("mode", "subscription") == "subscription":
        return subs.stripe_id(obj.get("subscription"))
    return None


def customer_id_of(obj):
    """The Stripe customer an event's object belongs to (the object itself for customer events)."""
    return subs.stripe_id(obj.get("id") if obj.get("object") == "customer" else obj.get("customer"))


def _metadatas(obj):
    yield subs.metadata_of(obj)
    yield subs.metadata_of(obj.get("subscription_details"))
    yield subs.metadata_of(subs.dict_of(obj.get("parent")).get("subscription_details"))
    if isinstance(obj.get("subscription"), dict):
        yield subs.metadata_of(obj["subscription"])


def route(event):
    """The project a deployment-wide event belongs to: pulse_project_id metadata, else customer id."""
    obj = obj_of(event)
    for meta in _metadatas(obj):
        public_id = meta.get("pulse_project_id")
        if public_id:
            project = Project.get_or_none(Project.public_id == str(public_id))
            if project is not None:
                return project
    customer_id = customer_id_of(obj)
    if customer_id:
        ids = {c.project_id for c in Customer.select(Customer.project).where(
            Customer.stripe_customer_id == str(customer_id)).distinct().limit(2)}
        if len(ids) == 1:
            return Project.get_by_id(ids.pop())
    return None


# ---------------------------------------------------------------- Stripe reads (outside any DB block)


def stripe_key(project, config, box):
    """The project's Stripe secret key, else the deployment's, else None."""
    return projects.stripe_secret_key(project, box, config.stripe_secret_key)


def plain(obj):
    """A StripeObject as the plain JSON dict Stripe sent (what the upsert reads)."""
    response = getattr(obj, "last_response", None)
    return response.data if response is not None else json.loads(str(obj))


async def _read(client, event):
    found = {}
    sub_id = subscription_id_of(event)
    try:
        if sub_id:
            found["subscription"] = plain(await billing.call(client.v1.subscriptions.retrieve_async, sub_id))
        if event["type"] == "customer.updated" and customer_id_of(obj_of(event)):
            found["customer"] = plain(await billing.call(client.v1.customers.retrieve_async,
                                                         customer_id_of(obj_of(event))))
    except billing.StripeFailure as exc:
        if exc.code != "resource_missing":
            raise
        # Stripe does not know it (deleted test data, another account): fall back to the payload.
        found.pop("subscription", None)
    return found


async def fetch(event, key, config):
    """Stripe's current objects for `event`: {"subscription", "customer" (when read), "at": ms}.

    "at" is taken before the request, so the fetched state is at least that new.
    """
    at = subs.clock_ms()
    found = await _read(billing.client_for(config, key), event) if key else {}
    found["at"] = at
    return found


# ---------------------------------------------------------------- applying (inside one transaction)


def _apply_subscription(project, event, fetched, email=None):
    if "subscription" in fetched:
        return subs.upsert_subscription(project, fetched["subscription"], fetched["at"], email=email)
    obj = obj_of(event)
    snapshot = subs.event_snapshot(event.get("created"))
    if event["type"] in SUBSCRIPTION_EVENTS:
        return subs.upsert_subscription(project, obj, snapshot, email=email)
    if isinstance(obj.get("subscription"), dict):
        return subs.upsert_subscription(project, obj["subscription"], snapshot, email=email)
    if event["type"] == "invoice.payment_failed":
        return subs.UPDATED if subs.mark_past_due(project, subscription_id_of(event), snapshot) else subs.STALE
    return subs.UNMATCHED


def _apply_checkout(project, event, fetched):
    session = obj_of(event)
    if session.get("mode", "subscription") != "subscription":
        return IGNORED
    meta = subs.metadata_of(session)
    external = session.get("client_reference_id") or meta.get("external_user_id")
    email = (session.get("customer_details") or {}).get("email") or session.get("customer_email")
    customer = subs.resolve_customer(project, subs.stripe_id(session.get("customer")), external, email=email)
    if customer is None:
        return IGNORED
    if subscription_id_of(event):
        _apply_subscription(project, event, fetched, email=email)
    return PROCESSED


def _apply_customer(project, event, fetched):
    obj = fetched.get("customer") or obj_of(event)
    if obj.get("deleted") or not subs.stripe_id(obj.get("id")):
        return IGNORED
    email = (obj.get("email") or "")[:254]
    customer = Customer.get_or_none(Customer.project == project, Customer.stripe_customer_id == obj["id"])
    if customer is None:
        return IGNORED
    if email and customer.email != email:
        Customer.update(email=email, updated_at=utcnow()).where(Customer.id == customer.id).execute()
    return PROCESSED


def apply(project, event, fetched):
    """Apply `event` to local state; returns PROCESSED or IGNORED. Never awaits."""
    kind = event["type"]
    if kind == "checkout.session.completed":
        return _apply_checkout(project, event, fetched)
    if kind in SUBSCRIPTION_EVENTS or kind in INVOICE_EVENTS:
        if not subscription_id_of(event):
            return IGNORED
        return IGNORED if _apply_subscription(project, event, fetched) == subs.UNMATCHED else PROCESSED
    if kind == "customer.updated":
        return _apply_customer(project, event, fetched)
    return IGNORED
