"""What a Stripe event means: its project, Stripe's current state behind it, and applying it (one dict of handlers)."""

from collections.abc import Awaitable, Callable
from typing import Any

import stripe

from pulse import billing, entitlements, outbox, ownership, projects, subscriptions
from pulse.config import Config
from pulse.models import Customer, Project, StripeCustomerHistory
from pulse.outcomes import Outcome
from pulse.security import SecretBox
from pulse.stripe_objects import (
    CUSTOMER_EVENTS,
    INVOICE_EVENTS,
    JSON,
    SUBSCRIPTION_EVENTS,
    customer_id_of,
    dict_of,
    event_snapshot,
    invoice_subscription_id,
    metadata_of,
    metadatas_of,
    obj_of,
    plain,
    stripe_id,
    subscription_id_of,
)

PROCESSED, IGNORED = Outcome.PROCESSED, Outcome.IGNORED
Result = tuple[Outcome, str | None]  # (PROCESSED, None) or (IGNORED, reason)


def route(event: JSON) -> Project | None:
    """The project a deployment-wide event is for: pulse_project_id metadata, else customer id.

    Only a candidate: the payload is not Stripe's current truth, so `apply` still checks ownership.
    """
    obj = obj_of(event)
    for meta in metadatas_of(obj):
        public_id = meta.get("pulse_project_id")
        if public_id:
            project = Project.get_or_none(Project.public_id == str(public_id))
            if project is not None:
                # Real Stripe's endpoint never feeds a sandbox project (SPEC 8): its Stripe is the simulator.
                return None if project.sandbox else project
    customer_id = customer_id_of(obj)
    if customer_id:
        # Linked now, else before Stripe deleted it (the late events of a deleted customer).
        for model in (Customer, StripeCustomerHistory):
            ids = {
                row.project_id
                for row in model.select(model.project)
                .where(model.stripe_customer_id == str(customer_id))
                .distinct()
                .limit(2)
            }
            if ids:
                project = Project.get_by_id(ids.pop()) if len(ids) == 1 else None
                return None if project is None or project.sandbox else project
    return None


# ---------------------------------------------------------------- Stripe reads (outside any DB block)


async def _retrieve(method: Callable[..., Awaitable[Any]], obj_id: str, found: JSON, name: str) -> bool:
    try:
        found[name] = plain(await billing.call(method, obj_id))
    except billing.StripeFailure as exc:
        if exc.code != "resource_missing" and exc.http_status != 404:
            raise
        # Not in this account or mode (or a forged id): the payload never stands in for it.
        found["ignore"] = f"Stripe does not know {name} {obj_id[:60]} in this account and mode (404 on re-read)"
    return name in found


async def _read(client: stripe.StripeClient, event: JSON) -> JSON:
    """Stripe's current objects behind `event`: "session", "subscription", "customer" as they apply."""
    kind, obj = event["type"], obj_of(event)
    found: JSON = {}
    sub_id = subscription_id_of(event)
    if kind == "checkout.session.completed":
        session_id = stripe_id(obj.get("id"))
        if not session_id or not await _retrieve(
            client.v1.checkout.sessions.retrieve_async, session_id, found, "session"
        ):
            return found
        session = found["session"]
        sub_id = stripe_id(session.get("subscription")) if session.get("mode") == "subscription" else None
    customer_id = customer_id_of(obj)
    if (kind in CUSTOMER_EVENTS or kind == entitlements.EVENT) and customer_id:
        await _retrieve(client.v1.customers.retrieve_async, customer_id, found, "customer")
    if kind == entitlements.EVENT and "customer" in found and not found["customer"].get("deleted"):
        # The summary in the payload is only a hint: Stripe's list now is the truth.
        found["features"] = await entitlements.active_lookup_keys(client, found["customer"]["id"])
    if sub_id:
        await _retrieve(client.v1.subscriptions.retrieve_async, sub_id, found, "subscription")
    return found


def _from_payload(event: JSON) -> JSON:
    """Without a Stripe key the signed payload is all we have; the same ownership rule judges it."""
    obj, kind = obj_of(event), event["type"]
    found: JSON = {"at": event_snapshot(event.get("created")), "payload_only": True}
    if kind in SUBSCRIPTION_EVENTS:
        found["subscription"] = obj
    elif kind in CUSTOMER_EVENTS:
        found["customer"] = obj
    elif kind == entitlements.EVENT:
        found["customer"] = {"id": stripe_id(obj.get("customer"))}
        listed = dict_of(obj.get("entitlements")).get("data") or []
        found["features"] = [str(e["lookup_key"]) for e in listed if isinstance(e, dict) and e.get("lookup_key")]
    else:
        found["session" if kind == "checkout.session.completed" else "invoice"] = obj
        if isinstance(obj.get("subscription"), dict):
            found["subscription"] = obj["subscription"]
    return found


async def fetch(event: JSON, project: Project, *, config: Config, box: SecretBox) -> JSON:
    """Stripe's current objects for `event`, {"at": ms, ...}, or {"ignore": reason} when it cannot be ours.

    Read with the project's Stripe key, else the deployment's; with neither, the signed payload
    stands in. "at" is taken before the requests, so the fetched state is at least that new. The
    event's `livemode` must be the key's mode: a test-mode project never applies live events, and
    back. Raises billing.StripeFailure when Stripe cannot answer (not for a 404: that is "ignore").
    """
    key = projects.stripe_secret_key(project, box, config.stripe_secret_key)
    if not key:
        return _from_payload(event)
    at = subscriptions.clock_ms()
    mismatch = ownership.mode_mismatch(event, key)
    if mismatch:
        return {"at": at, "ignore": mismatch}
    found = await _read(billing.client_for(config, key), event)
    found["at"] = at
    return found


# ---------------------------------------------------------------- applying (inside one transaction)


def _apply_subscription(project: Project, event: JSON, fetched: JSON, email: str | None = None) -> Result:
    sub = fetched.get("subscription")
    if sub is None:
        invoice = fetched.get("invoice")
        if fetched.get("payload_only") and invoice and event["type"] == "invoice.payment_failed":
            reason = ownership.not_owned(project, [invoice], customer_id_of(invoice))
            if reason:
                return IGNORED, f"invoice {reason}"
            marked = subscriptions.mark_past_due(project, invoice_subscription_id(invoice), fetched["at"])
            return (PROCESSED, None) if marked else (IGNORED, "no matching subscription with access to mark past_due")
        return IGNORED, "the event names no subscription"
    reason = ownership.not_owned(project, [sub], sub.get("customer"))
    if reason:
        return IGNORED, f"subscription {stripe_id(sub.get('id'))} {reason}"
    if subscriptions.upsert_subscription(project, sub, fetched["at"], email=email) == subscriptions.UNMATCHED:
        return IGNORED, "the subscription names no customer of this project (no external_user_id metadata)"
    return PROCESSED, None


def _apply_checkout(project: Project, event: JSON, fetched: JSON) -> Result:
    session = fetched["session"]
    if session.get("mode", "subscription") != "subscription":
        return IGNORED, "not a subscription-mode Checkout Session"
    customer_id = stripe_id(session.get("customer"))
    reason = ownership.not_owned(project, [fetched.get("subscription"), session], customer_id)
    if reason:
        return IGNORED, f"checkout session {reason}"
    # Owned: the customer and user come from Stripe's session (ours by metadata or by its linked customer).
    meta = metadata_of(session)
    external = session.get("client_reference_id") or meta.get("external_user_id")
    email = dict_of(session.get("customer_details")).get("email") or session.get("customer_email")
    customer = subscriptions.resolve_customer(project, customer_id, external, email=email)
    if customer is None:
        return IGNORED, "the session names no customer of this project"
    if fetched.get("subscription"):
        _apply_subscription(project, event, fetched, email=email)
    outbox.checkout_completed(project, customer, stripe_id(session.get("id")), stripe_id(session.get("subscription")))
    return PROCESSED, None


def _owned_customer(project: Project, fetched: JSON) -> tuple[JSON, str | None]:
    cus = fetched["customer"]
    reason = ownership.not_owned(project, [cus], stripe_id(cus.get("id")))
    return cus, reason and f"customer {reason}"


def _apply_customer_updated(project: Project, event: JSON, fetched: JSON) -> Result:
    cus, reason = _owned_customer(project, fetched)
    if reason or cus.get("deleted"):
        return IGNORED, reason or "the customer is deleted at Stripe"
    email = (cus.get("email") or "")[:254]
    if not subscriptions.update_linked_email(project, cus["id"], email):
        return IGNORED, "no customer of this project uses this Stripe customer now"
    return PROCESSED, None


def _apply_customer_deleted(project: Project, event: JSON, fetched: JSON) -> Result:
    cus, reason = _owned_customer(project, fetched)
    if reason:
        return IGNORED, reason
    if not cus.get("deleted") and not fetched.get("payload_only"):
        return IGNORED, "the customer still exists at Stripe"
    customer = subscriptions.retire_stripe_customer(project, cus["id"], subscriptions.DELETED_IN_STRIPE, fetched["at"])
    if customer is not None:
        outbox.customer_deleted(project, customer, cus["id"])
    return PROCESSED, None


def _apply_entitlements(project: Project, event: JSON, fetched: JSON) -> Result:
    if "customer" not in fetched:
        return IGNORED, "the event names no customer"
    cus, reason = _owned_customer(project, fetched)
    if reason or cus.get("deleted"):
        return IGNORED, reason or "the customer is deleted at Stripe"
    # Before the checkout's own event links the customer, its metadata (set at checkout) names the user.
    customer = subscriptions.resolve_customer(project, cus["id"], metadata_of(cus).get("external_user_id"))
    if customer is None or customer.stripe_customer_id != cus["id"]:
        return IGNORED, "no customer of this project uses this Stripe customer now"
    if not entitlements.store(project, customer.id, fetched.get("features") or [], fetched["at"]):
        return IGNORED, "newer entitlements are already stored"
    return PROCESSED, None


def _apply_subscription_event(project: Project, event: JSON, fetched: JSON) -> Result:
    return _apply_subscription(project, event, fetched)


APPLY: dict[str, Callable[[Project, JSON, JSON], Result]] = {
    **dict.fromkeys(SUBSCRIPTION_EVENTS | INVOICE_EVENTS, _apply_subscription_event),
    "checkout.session.completed": _apply_checkout,
    "customer.updated": _apply_customer_updated,
    "customer.deleted": _apply_customer_deleted,
    entitlements.EVENT: _apply_entitlements,
}
HANDLED = frozenset(APPLY)


def apply(project: Project, event: JSON, fetched: JSON) -> Result:
    """Apply `event` to `project`: (Outcome.PROCESSED, None) or (Outcome.IGNORED, reason). Never awaits.

    `fetched` is `fetch()`'s result. Call inside one transaction; nothing changes when ignored.
    """
    if fetched.get("ignore"):
        return IGNORED, fetched["ignore"]
    handler = APPLY.get(event["type"])
    if handler is None:
        return IGNORED, f"event type {event['type'][:100]} is not handled"
    return handler(project, event, fetched)
