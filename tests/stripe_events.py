"""Stripe-shaped webhook events (shapes from Stripe's fixtures) and a signer that signs like Stripe."""

import copy
import hashlib
import hmac
import json
import secrets
import time
from functools import lru_cache
from pathlib import Path

from sandbox import objects

# shared/ sits beside the checkout (and beside CI's fresh clone); /work/shared is the workspace's copy.
_FIXTURE = Path("fixtures/stripe-openapi-fixtures3.json")
FIXTURES = next(
    (
        base / _FIXTURE
        for base in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared"))
        if (base / _FIXTURE).exists()
    ),
    Path("/work/shared") / _FIXTURE,
)
OLD_API = "2024-06-20"
NEW_API = "2025-08-27.basil"


def sign(payload, secret, timestamp=None):
    """The Stripe-Signature header value for `payload`: t=<unix>,v1=HMAC-SHA256(secret, "t.payload")."""
    payload = payload.decode("utf-8") if isinstance(payload, bytes) else payload
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def body_of_event(event):
    return json.dumps(event, separators=(",", ":"))


@lru_cache(maxsize=1)
def _fixtures():
    return json.loads(FIXTURES.read_text())["resources"]


def fixture(name):
    """A deep copy of Stripe's own example object `name` (e.g. "invoice")."""
    return copy.deepcopy(_fixtures()[name])


def event(type_, data_object, api_version=NEW_API, created=None, previous_attributes=None):
    """An Event in Stripe's shape around `data_object`."""
    body = objects.event(type_, data_object, api_version, previous_attributes)
    if created is not None:
        body["created"] = created
    return body


def invoice(subscription, api_version=NEW_API, paid=True):
    """An invoice for `subscription` (a dict) in the shape of `api_version`.

    Before 2025-03-31 the subscription is `invoice.subscription`; from then on it is
    `invoice.parent.subscription_details.subscription` (and the top-level field is gone).
    """
    inv = fixture("invoice")
    inv.update(
        id="in_" + secrets.token_hex(8),
        customer=subscription["customer"],
        status="paid" if paid else "open",
        paid=paid,
        attempted=True,
        attempt_count=1,
        billing_reason="subscription_cycle",
        created=int(time.time()),
    )
    details = {"metadata": dict(subscription.get("metadata") or {}), "subscription": subscription["id"]}
    if api_version[:10] < "2025-03-31":
        inv["subscription"] = subscription["id"]
        inv["subscription_details"] = {"metadata": details["metadata"]}
        inv.pop("parent", None)
    else:
        inv.pop("subscription", None)
        inv["parent"] = {"type": "subscription_details", "quote_details": None, "subscription_details": details}
    return inv


def customer_object(customer_id, email, metadata=None):
    cus = fixture("customer")
    cus.update(id=customer_id, email=email, metadata=dict(metadata or {}), discount=None)
    return cus


def new_subscription(
    fake,
    external_user_id,
    *,
    project_id=None,
    email=None,
    status="active",
    price="price_monthly",
    interval="month",
    plan_slug="pro",
    trial_days=None,
):
    """Create a Stripe customer, a completed Checkout Session and its subscription in the fake.

    Returns (session, subscription) as the fake's API shows them now.
    """
    email = email or f"{external_user_id}@example.test"
    meta = {
        "external_user_id": external_user_id,
        "plan_slug": plan_slug,
        "interval": {"month": "monthly", "year": "yearly"}[interval],
        "stripe_price_id": price,
    }
    if project_id:
        meta["pulse_project_id"] = project_id
    cus = fake.dispatch("POST", "customers", {"email": email, "metadata": dict(meta)})
    fake.add_price(price, interval)
    session = fake.dispatch(
        "POST",
        "checkout/sessions",
        {
            "mode": "subscription",
            "customer": cus["id"],
            "client_reference_id": external_user_id,
            "success_url": "https://app.example.test/ok",
            "cancel_url": "https://app.example.test/no",
            "line_items": [{"price": price, "quantity": "1"}],
            "metadata": dict(meta),
            "subscription_data": {"metadata": dict(meta)},
        },
    )
    sub = fake.complete_checkout(session["id"], status=status, trial_days=trial_days)
    session = fake.session(session["id"])
    session["customer_details"] = {"email": email}
    return session, sub
