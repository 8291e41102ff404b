"""A tenant of a running server (tests.live_server) using a sandbox project: its API, hosted pages and key."""

import re

import httpx
import pytest

CARD_OK, CARD_FAILS_LATER = "4242424242424242", "4000000000000341"


CLIENTS = []


@pytest.fixture(autouse=True)
def close_clients():
    """Close the HTTP clients a test opened."""
    yield
    while CLIENTS:
        CLIENTS.pop().close()


def client(server):
    CLIENTS.append(httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=False))
    return CLIENTS[-1]


class Tenant:
    """A SaaS app using one project of a running server, by its API key."""

    def __init__(self, server, created):
        self.server, self.created, self.key = server, created, created["api_key"]
        self.http = client(server)

    def api(self, method, path, body=None, key=None):
        # Connection: close, as an API answer refused in prepare() drops the connection without saying so.
        response = self.http.request(
            method, path, json=body, headers={"X-API-Key": key or self.key, "Connection": "close"}
        )
        return response.status_code, (response.json() if response.content else None)

    def checkout(self, user="u1", price="price_pro_monthly", plan="pro", **extra):
        status, body = self.api(
            "POST",
            "/api/checkout",
            {
                "external_user_id": user,
                "email": f"{user}@example.test",
                "plan_slug": plan,
                "stripe_price_id": price,
                "success_url": "http://app.test/welcome?s={CHECKOUT_SESSION_ID}",
                "cancel_url": "http://app.test/pricing",
                **extra,
            },
        )
        assert status == 200, body
        return body

    def subscription(self, user="u1"):
        return self.api("GET", f"/api/subscription?external_user_id={user}")

    def form(self, url, **fields):
        """Submit a hosted page's form as a browser would (its XSRF token from the page)."""
        page = self.http.get(url)
        assert page.status_code == 200, page.text
        found = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        token = found.group(1) if found else self.http.cookies["_xsrf"]  # a page without its form: post anyway
        return self.http.post(url, data={"_xsrf": token, **fields})


def sandbox_project(server, name="Demo"):
    return Tenant(server, server.cli("create-project", name, "--sandbox"))
