"""Shared helpers for the checkout, portal and subscription tests."""

import secrets
from datetime import timedelta

from pulse import db
from pulse.models import Customer, Subscription
from pulse.status import map_status

DROP = object()


def checkout_body(**changes):
    """A valid POST /api/checkout body; pass field=DROP to leave a field out."""
    body = {
        "external_user_id": "user-1",
        "email": "ada@example.test",
        "plan_slug": "pro",
        "stripe_price_id": "price_pro_monthly",
        "success_url": "https://app.test/welcome",
        "cancel_url": "https://app.test/pricing",
    }
    body.update(changes)
    return {key: value for key, value in body.items() if value is not DROP}


def add_customer(project, external_user_id, email="ada@example.test", stripe_customer_id="auto"):
    if stripe_customer_id == "auto":
        stripe_customer_id = "cus_" + secrets.token_hex(6)
    with db.block():
        return Customer.create(
            project=project, external_user_id=external_user_id, email=email, stripe_customer_id=stripe_customer_id
        )


def add_subscription(customer, stripe_status="active", started_days_ago=10, cancel_at_period_end=False, **fields):
    """A Subscription row as the webhook sync would store it."""
    started = db.utcnow() - timedelta(days=started_days_ago)
    values = dict(
        project=customer.project,
        customer=customer,
        stripe_subscription_id="sub_" + secrets.token_hex(6),
        plan_slug="pro",
        stripe_price_id="price_pro_monthly",
        interval="monthly",
        stripe_status=stripe_status,
        status=map_status(stripe_status, cancel_at_period_end, fields.get("cancel_at")),
        cancel_at_period_end=cancel_at_period_end,
        started_at=started,
        current_period_end=started + timedelta(days=30),
    )
    values.update(fields)
    with db.block():
        return Subscription.create(**values)
