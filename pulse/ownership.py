"""Which project a Stripe object belongs to: the one rule for webhooks, re-apply and sync-stripe.

Stripe sends every event of an account to every endpoint of that account, and several projects may
share an account (the deployment-wide key, or one key in two projects). An object is a project's when
its `pulse_project_id` metadata names the project or, with no such metadata, when its Stripe customer is
linked (now, or before Stripe deleted it) to a customer of the project. Only objects as re-read from
Stripe with the project's key are judged; a signed payload only says which objects to re-read.
"""

from collections.abc import Iterable
from typing import Any

from pulse.models import Customer, Project, StripeCustomerHistory
from pulse.stripe_objects import JSON, dict_of, metadata_of, stripe_id


def key_livemode(secret_key: str | None) -> bool | None:
    """True for a live key, False for a test key, None when the shape says neither (or no key)."""
    key = secret_key or ""
    if key.startswith(("sk_live_", "rk_live_")):
        return True
    if key.startswith(("sk_test_", "rk_test_")):
        return False
    return None


def mode_mismatch(event: JSON, secret_key: str | None) -> str | None:
    """Why an event's `livemode` cannot be the key's account mode, or None when it can."""
    mode = key_livemode(secret_key)
    if mode is None or bool(event.get("livemode")) == mode:
        return None
    return (
        f"event is {'live' if event.get('livemode') else 'test'} mode but the project's Stripe key is a "
        f"{'live' if mode else 'test'} key"
    )


def named_project(objects: Iterable[JSON | None]) -> str | None:
    """The pulse_project_id the first object that carries one names (most specific object first), or None."""
    for obj in objects:
        for meta in (metadata_of(obj), metadata_of(dict_of(obj).get("subscription_details"))):
            owner = meta.get("pulse_project_id")
            if owner:
                return str(owner)
    return None


def is_linked(project: Project, stripe_customer_id: str | None) -> bool:
    """Whether a customer of `project` uses, or used until Stripe deleted it, this Stripe customer id."""
    if not stripe_customer_id:
        return False
    return (
        Customer.select().where(Customer.project == project, Customer.stripe_customer_id == stripe_customer_id).exists()
        or StripeCustomerHistory.select()
        .where(StripeCustomerHistory.project == project, StripeCustomerHistory.stripe_customer_id == stripe_customer_id)
        .exists()
    )


def not_owned(project: Project, objects: Iterable[JSON | None], stripe_customer_id: Any) -> str | None:
    """None when `objects` (re-read from Stripe, most specific first) belong to `project`, else the reason.

    Call inside a db block. `stripe_customer_id` is the customer the objects belong to at Stripe.
    """
    objects = [obj for obj in objects if obj]
    owner = named_project(objects)
    if owner:
        return None if owner == project.public_id else f"belongs to another project (pulse_project_id {owner[:40]})"
    if is_linked(project, stripe_id(stripe_customer_id)):
        return None
    if stripe_id(stripe_customer_id):
        return "no pulse_project_id metadata and its Stripe customer is not linked to a customer of this project"
    return "no pulse_project_id metadata and no Stripe customer"
