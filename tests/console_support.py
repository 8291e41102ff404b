"""A cookie-keeping console client for handler tests, and seed data for console pages.

A pytest plugin (tests/conftest.py lists it in `pytest_plugins`): `console` and `seeded` reach every test.
"""

import json
import re
import secrets
from datetime import timedelta
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest

from pulse import db
from pulse.db import utcnow
from pulse.models import Customer, Subscription, WebhookEvent

PASSWORD = "correct horse battery"
XSRF = secrets.token_hex(16)  # a v1 token: the same hex string in the cookie and in the form


class Console:
    """Signs in through the real login form and keeps cookies like a browser (minus JavaScript)."""

    def __init__(self, http_client, base_url):
        self.http_client, self.base_url = http_client, base_url
        self.cookies = {"_xsrf": XSRF}
        self.raw_set_cookies = []

    def _headers(self, extra=None):
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        headers.update(extra or {})
        return headers

    def _keep(self, response):
        for header in response.headers.get_list("Set-Cookie"):
            self.raw_set_cookies.append(header)
            jar = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if (
                    morsel.value == ""
                    or morsel["expires"].startswith(("Thu, 01 Jan 1970", "Wed, 31 Dec 1969"))
                    or morsel["max-age"] == "0"
                ):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return response

    async def get(self, path, headers=None):
        response = await self.http_client.fetch(
            self.base_url + path, headers=self._headers(headers), raise_error=False, follow_redirects=False
        )
        return self._keep(response)

    async def post(self, path, data=None, xsrf=True, headers=None):
        form = dict(data or {})
        if xsrf:
            # What the page's form carries: the token of the _xsrf cookie, which sign-in rotates.
            form["_xsrf"] = self.cookies.get("_xsrf", XSRF)
        response = await self.http_client.fetch(
            self.base_url + path,
            method="POST",
            body=urlencode(form, doseq=True),  # a list value: one field per item (checkboxes)
            raise_error=False,
            follow_redirects=False,
            headers=self._headers({"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}),
        )
        return self._keep(response)

    async def login(self, email, password=PASSWORD, next_path=""):
        data = {"email": email, "password": password}
        if next_path:
            data["next"] = next_path
        return await self.post("/console/login", data)


def text(response):
    return response.body.decode("utf-8")


def seed(project, count=3, status="active"):
    """`count` customers with one subscription each and a processed and a failed webhook event."""
    now = utcnow()
    with db.block():
        customers = []
        for i in range(count):
            customer = Customer.create(
                project=project,
                external_user_id=f"user-{i:03d}",
                email=f"person{i}@example.com",
                stripe_customer_id=f"cus_seed{i}",
            )
            Subscription.create(
                project=project,
                customer=customer,
                stripe_subscription_id=f"sub_seed{i}",
                plan_slug="pro",
                stripe_price_id="price_pro",
                stripe_status=status,
                status=status,
                started_at=now - timedelta(days=7 * i),
                current_period_end=now + timedelta(days=30),
            )
            customers.append(customer)
        WebhookEvent.create(
            project=project,
            stripe_event_id="evt_ok",
            type="invoice.paid",
            outcome="processed",
            object_id="in_1",
            stripe_customer_id="cus_seed0",
            payload='{"id": "evt_ok"}',
        )
        failed = WebhookEvent.create(
            project=project,
            stripe_event_id="evt_bad",
            type="customer.updated",
            outcome="failed",
            error="ValueError while applying the event",
            object_id="cus_seed0",
            stripe_customer_id="cus_seed0",
            payload=json.dumps(failed_event_payload()),
        )
    return customers, failed


def failed_event_payload(event_id="evt_bad", customer_id="cus_seed0", email="renamed@example.com"):
    """A customer.updated event that applies cleanly (no Stripe key: the payload is used as is)."""
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2025-08-27.basil",
        "created": 1700000000,
        "livemode": False,
        "type": "customer.updated",
        "data": {
            "object": {"id": customer_id, "object": "customer", "email": email, "name": "<script>alert(1)</script>"}
        },
    }


def new_key_in(body):
    """The once-shown raw key on a keys page."""
    found = re.search(r'id="new-key"[^>]*value="(pp_live_[0-9A-Za-z]+)"', body)
    return found.group(1) if found else None


@pytest.fixture
def console(http_client, base_url):
    """A signed-out Console on the test app."""
    return Console(http_client, base_url)


@pytest.fixture
def seeded(project):
    """`seed` the `project` fixture's project -> {"failed": failed event id, "key": its API key id} for `url`."""
    customers, failed = seed(project.project)
    return {"failed": failed.id, "key": project.api_key.key_id}


def url(project, suffix, seeded):
    """The console path of `project`'s page `suffix`, with {failed} and {key} filled from `seeded`."""
    return f"/console/p/{project.project.public_id}/" + suffix.format(**seeded)
