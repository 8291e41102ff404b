"""Fixtures and helpers for webhook tests: signed deliveries, reads, and Stripe's truth.

A pytest plugin (tests/conftest.py lists it in `pytest_plugins`): its fixtures reach every test
module without imports; its helpers are imported as usual.
"""

import json
import time

import pytest

from pulse import db
from pulse.models import WebhookEvent
from tests.stripe_events import NEW_API, OLD_API, body_of_event, sign
from tests.support import body_of

WHSEC = "whsec_project_" + "a" * 24
DEPLOY_WHSEC = "whsec_deploy_" + "b" * 24
BOTH_SHAPES = [OLD_API, NEW_API]


def webhook_overrides(fake_stripe):
    """Settings for webhook tests (a test module's `config_overrides`): the fake, the deployment secret, no retries."""
    return fake_stripe.config_overrides(stripe_webhook_secret=DEPLOY_WHSEC, stripe_max_retries=0)


def outgoing_overrides(fake_stripe):
    """Settings for outgoing-webhook tests: the fake, loopback receivers, fast retries and polls."""
    return {
        **webhook_overrides(fake_stripe),
        "webhook_allow_loopback": True,
        "webhook_retry_base": 0.05,
        "webhook_timeout": 2.0,
        "webhook_poll": 0.1,
    }


async def add_endpoint(http_client, base_url, project, url, **fields):
    """POST /api/webhook-endpoints for `project` (a NewProject) -> the created endpoint, with its secret."""
    resp = await http_client.fetch(
        base_url + "/api/webhook-endpoints",
        method="POST",
        headers={"X-API-Key": project.api_key.api_key, "Content-Type": "application/json"},
        body=json.dumps({"url": url, "description": "app", **fields}),
        raise_error=False,
    )
    assert resp.code == 201, resp.body
    return body_of(resp)


@pytest.fixture
def hooked(make_project):
    """A project with a webhook signing secret (Stripe key: the deployment's, i.e. the fake's)."""
    return make_project(name="Hooked", stripe_webhook_secret=WHSEC)


@pytest.fixture
def deliver(http_client, base_url, hooked):
    """deliver(event_or_body, path=None, secret=WHSEC, timestamp=None, headers=None) -> response."""

    async def send(evt, path=None, secret=WHSEC, timestamp=None, headers=None, signature=None):
        body = evt if isinstance(evt, (str, bytes)) else body_of_event(evt)
        all_headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": signature or sign(body, secret, timestamp),
        }
        all_headers.update(headers or {})
        all_headers = {k: v for k, v in all_headers.items() if v is not None}
        return await http_client.fetch(
            base_url + (path or f"/api/webhook/{hooked.project.public_id}"),
            method="POST",
            body=body,
            headers=all_headers,
            raise_error=False,
        )

    return send


@pytest.fixture
def read(http_client, base_url):
    """read(new_project, external_user_id) -> GET /api/subscription's body, or None on 404."""

    async def get(new_project, external_user_id):
        resp = await http_client.fetch(
            f"{base_url}/api/subscription?external_user_id={external_user_id}",
            headers={"X-API-Key": new_project.api_key.api_key},
            raise_error=False,
        )
        if resp.code == 404:
            assert body_of(resp)["error"]["code"] == "not_found"
            return None
        assert resp.code == 200, resp.body
        return body_of(resp)

    return get


def events_of(project=None, **where):
    with db.block():
        query = WebhookEvent.select().order_by(WebhookEvent.id)
        if project is not None:
            query = query.where(WebhookEvent.project == project)
        for name, value in where.items():
            query = query.where(getattr(WebhookEvent, name) == value)
        return list(query)


def reason_of(project, evt):
    """(outcome, reason) of the one stored row of Stripe event `evt` in `project`."""
    [row] = events_of(project, stripe_event_id=evt["id"])
    return row.outcome, row.reason


def iso(ts):
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


STATUS_WORDS = {
    "active": "active",
    "trialing": "trialing",
    "past_due": "past_due",
    "unpaid": "unpaid",
    "canceled": "cancelled",
    "incomplete_expired": "cancelled",
    "incomplete": "incomplete",
    "paused": "paused",
}


INTERVAL_WORDS = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly"}


def truth(fake, sub_id):
    """Stripe's current subscription as our API must show it (computed here, independently of pulse).

    No plan catalog is involved: the plan item is the first licensed item, and plan_slug is the price's
    lookup_key, else the checkout metadata's while the price is the one it recorded.
    """
    sub = fake.subscription(sub_id, NEW_API)
    item = next(i for i in sub["items"]["data"] if i["price"]["recurring"]["usage_type"] == "licensed")
    price = item["price"]
    status = STATUS_WORDS[sub["status"]]
    if sub["status"] in ("active", "trialing") and (sub["cancel_at_period_end"] or sub["cancel_at"]):
        status = "cancelling"
    meta = sub["metadata"]
    slug = price.get("lookup_key") or (
        meta.get("plan_slug") if meta.get("stripe_price_id", price["id"]) == price["id"] else None
    )
    pause = sub.get("pause_collection")
    return {
        "status": status,
        "has_access": status in ("active", "trialing", "cancelling", "past_due"),
        "stripe_price_id": price["id"],
        "interval": INTERVAL_WORDS[price["recurring"]["interval"]],
        "interval_count": price["recurring"]["interval_count"],
        "quantity": item["quantity"],
        "current_period_end": iso(max(i["current_period_end"] for i in sub["items"]["data"])),
        "cancel_at": iso(sub["cancel_at"]),
        "trial_end": iso(sub["trial_end"]),
        "plan_slug": slug,
        "pause_collection": pause and {"behavior": pause["behavior"], "resumes_at": iso(pause.get("resumes_at"))},
        "subscriptions_with_access": int(status in ("active", "trialing", "cancelling", "past_due")),
        "stripe_subscription_id": sub_id,
        "stripe_customer_id": sub["customer"],
    }


def assert_matches_stripe(found, fake, sub_id):
    assert found is not None
    expected = truth(fake, sub_id)
    assert {k: found[k] for k in expected} == expected
