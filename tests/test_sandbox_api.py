"""The sandbox API in SPEC 3.1's envelope (QA #1, #7): every route with unknown or another project's ids
answers 404 not_found, never a 5xx; validation names its field; state conflicts are 409. And the simulator's
Stripe routes answer Stripe's resource_missing: 404 for the object in the URL, 400 for one in a parameter."""

import json
import re
from datetime import datetime

import pytest

from handlers.base import allowed_methods
from pulse.config import RateLimit
from sandbox import api, lifecycle, store
from sandbox.core import Simulator, StripeError
from tests.test_sandbox_simulator import paid_subscription

config_overrides = pytest.fixture(lambda: {"rate_limit_authenticated": RateLimit(100_000, 60)})

# Each route's groups, by how the route list spells them: a route of another form fails the test until added.
GROUPS = {api.SID: "{id}", r"(\w+)": "{action}", "(attach|detach)": "{action}"}
ACTIONS = {r"(\w+)": ["switch", *lifecycle.PORTAL_ACTIONS, "nope"], "(attach|detach)": ["attach", "detach"]}
# A body each route would take, so that only the unknown id can be wrong.
GOOD = {
    ("SubscriptionActionHandler", "switch"): {"price": "price_new_one"},
    ("PayHandler", None): {"card": "4242424242424242"},
    ("CardHandler", None): {"card": "ok"},
    ("FeatureActionHandler", "attach"): {"lookup_key": "k", "product": "prod_nope"},
    ("FeatureActionHandler", "detach"): {"lookup_key": "k", "product": "prod_nope"},
}
ODD_BODIES = [None, {}, {"x": 1}, {"card": 7}, {"price": ["p"]}, {"days": True}, {"lookup_key": None}, [], "x"]


def paths():
    """(handler name, action, path) for every sandbox API route, each id and action filled in."""
    for pattern, handler in api.default_handlers:
        template, actions = pattern, [None]
        for group, slot in GROUPS.items():
            if group in template:
                template = template.replace(group, slot)
                actions = ACTIONS.get(group, actions)
        assert "(" not in template, f"the test does not know how to fill {pattern}"
        for action in actions:
            yield handler, action, template.replace("{action}", action or "")


@pytest.fixture
def sandboxes(make_project):
    """Two sandbox projects; the other one has a paid subscription, its customer and its session."""
    mine = make_project(name="Mine", sandbox=True)
    other = make_project(name="Other", sandbox=True)

    def pay(sim):
        sub_id = paid_subscription(sim)
        sub = sim.subscriptions[sub_id]
        session = next(s for s in sim.sessions.values() if s["subscription"] == sub_id)
        return [sub_id, sub["customer"], session["id"]]

    theirs, _ = store.run(other.project, pay)
    return mine, theirs


def envelope(response):
    body = json.loads(response.body)
    error = body["error"]
    assert error["status"] == response.code and error["code"].islower(), body
    return error


@pytest.mark.gen_test(timeout=120)
async def test_every_route_answers_unknown_and_other_projects_ids_with_404_never_5xx(http_client, base_url, sandboxes):
    mine, theirs = sandboxes

    async def call(method, path, body):
        raw = None if body is None else json.dumps(body)
        return await http_client.fetch(
            base_url + path,
            method=method,
            headers={"X-API-Key": mine.api_key.api_key, "Content-Type": "application/json"},
            body=(raw or "") if method == "POST" else None,
            raise_error=False,
        )

    checked = 0
    for handler, action, template in paths():
        for method in allowed_methods(handler):
            for obj_id in ["sub_nope", "cus_nope", "cs_nope", *theirs] if "{id}" in template else [None]:
                path = template.replace("{id}", obj_id or "")
                good = GOOD.get((handler.__name__, action), None)
                for body in [good, *ODD_BODIES] if method == "POST" else [None]:
                    response = await call(method, path, body)
                    assert response.code < 500, (method, path, body, response.body)
                    checked += 1
                    if response.code >= 400:
                        envelope(response)
                if method == "POST" and (obj_id or good):
                    response = await call(method, path, good)
                    assert (response.code, envelope(response)["code"]) == (404, "not_found"), (path, good)
    assert checked > 300


@pytest.mark.gen_test(timeout=60)
async def test_validation_and_conflicts_follow_spec_3_1(http_client, base_url, make_project):
    sandbox = make_project(name="Demo", sandbox=True)

    def pay(sim):
        sub_id = paid_subscription(sim)
        return sub_id, next(c["id"] for c in sim.sessions.values() if c["subscription"] == sub_id)

    (sub_id, session_id), _ = store.run(sandbox.project, pay)

    async def post(path, body=None):
        response = await http_client.fetch(
            base_url + "/sandbox/api/" + path,
            method="POST",
            headers={"X-API-Key": sandbox.api_key.api_key},
            body="" if body is None else json.dumps(body),
            raise_error=False,
        )
        error = envelope(response)
        return response.code, error["code"], error.get("field")

    assert await post("clock/advance", {}) == (422, "missing_field", "days")
    assert await post("clock/advance", {"days": -1}) == (400, "invalid_field", "days")
    assert await post("clock/advance", {"seconds": 1.5}) == (400, "invalid_field", "seconds")
    assert await post("clock/advance", {"seconds": 1, "x": 1}) == (400, "invalid_field", "x")
    assert await post("clock/advance", {"seconds": 1, "days": 1}) == (400, "invalid_field", "seconds")
    assert await post("settings", {}) == (422, "missing_field", "after_retries")
    assert await post("settings", {"after_retries": "never"}) == (400, "invalid_field", "after_retries")
    assert await post("customers/cus_x/card", {"card": "maybe"}) == (400, "invalid_field", "card")
    assert await post("customers/cus_x/card", {}) == (422, "missing_field", "card")
    assert await post(f"subscriptions/{sub_id}/switch", {}) == (422, "missing_field", "price")
    assert await post(f"subscriptions/{sub_id}/switch", {"price": "gold"}) == (400, "invalid_field", "price")
    assert await post(f"subscriptions/{sub_id}/cancel", {"at": 1}) == (400, "invalid_field", "at")
    assert await post("prices", {"unit_amount": 5}) == (422, "missing_field", "id")
    assert await post("prices", {"id": "price_a", "unit_amount": "5"}) == (400, "invalid_field", "unit_amount")
    assert await post("prices", {"id": "price_a", "interval": {}}) == (400, "invalid_field", "interval")
    assert await post("features/attach", {"price": "price_a"}) == (422, "missing_field", "lookup_key")
    assert await post("features/attach", {"lookup_key": "k"}) == (422, "missing_field", "price")
    both = {"lookup_key": "k", "price": "price_a", "product": "prod_a"}
    assert await post("features/attach", both) == (400, "invalid_field", "product")
    # State conflicts: 409 with a stable code.
    assert await post(f"checkout_sessions/{session_id}/pay") == (409, "checkout_session_not_open", None)
    assert (await post("prices", {"id": "price_pro_monthly"}))[:2] == (409, "price_exists")
    ended = await http_client.fetch(
        f"{base_url}/sandbox/api/subscriptions/{sub_id}/cancel_now",
        method="POST",
        headers={"X-API-Key": sandbox.api_key.api_key},
        body="",
        raise_error=False,
    )
    assert ended.code == 200, ended.body
    assert await post(f"subscriptions/{sub_id}/cancel") == (409, "subscription_ended", None)
    assert await post(f"subscriptions/{sub_id}/cancel_now") == (409, "subscription_ended", None)


def test_the_simulators_stripe_routes_answer_stripes_resource_missing():
    sim = Simulator()
    sub_id = paid_subscription(sim)
    sim.strict_prices = True

    def refused(method, path, params=None):
        with pytest.raises(StripeError) as caught:
            sim.dispatch(method, path, params or {})
        error = caught.value.body["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "resource_missing", error
        return caught.value.status, error.get("param")

    in_url = [
        ("GET", "customers/cus_nope"),
        ("POST", "customers/cus_nope"),
        ("DELETE", "customers/cus_nope"),
        ("GET", "checkout/sessions/cs_nope"),
        ("POST", "checkout/sessions/cs_nope/expire"),
        ("GET", "subscriptions/sub_nope"),
        ("POST", "subscriptions/sub_nope"),
        ("DELETE", "subscriptions/sub_nope"),
        ("POST", "subscriptions/sub_nope/resume"),
        ("GET", "prices/price_nope"),
        ("GET", "invoices/in_nope"),
        ("GET", "entitlements/features/feat_nope"),
        ("POST", "entitlements/features/feat_nope"),
        ("GET", "products/prod_nope"),
        ("GET", "products/prod_nope/features"),
    ]
    for method, path in in_url:
        assert refused(method, path) == (404, "id"), path
    checkout = {
        "mode": "subscription",
        "success_url": "https://a.test/",
        "line_items": [{"price": "price_pro_monthly"}],
    }
    product = sim.prices["price_pro_monthly"]["product"]
    in_params = [
        ("POST", "checkout/sessions", dict(checkout, customer="cus_nope"), "customer"),
        ("POST", "checkout/sessions", dict(checkout, line_items=[{"price": "price_nope"}]), "line_items[0][price]"),
        ("POST", "billing_portal/sessions", {"customer": "cus_nope"}, "customer"),
        ("POST", "invoices/create_preview", {"subscription": "sub_nope"}, "subscription"),
        ("GET", "entitlements/active_entitlements", {"customer": "cus_nope"}, "customer"),
        ("POST", f"subscriptions/{sub_id}", {"items": [{"price": "price_nope"}]}, "items[0][price]"),
        ("POST", f"products/{product}/features", {"entitlement_feature": "feat_nope"}, "entitlement_feature"),
    ]
    for method, path, params, param in in_params:
        assert refused(method, path, params) == (400, param), (path, param)


@pytest.mark.gen_test(timeout=60)
async def test_the_clock_answers_iso_8601_like_the_rest_of_our_api(http_client, base_url, make_project):
    sandbox = make_project(name="Demo", sandbox=True)
    headers = {"X-API-Key": sandbox.api_key.api_key}
    before = json.loads((await http_client.fetch(base_url + "/sandbox/api/clock", headers=headers)).body)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", before["now"]), before
    moved = await http_client.fetch(
        base_url + "/sandbox/api/clock/advance", method="POST", headers=headers, body=json.dumps({"days": 2})
    )
    after = json.loads(moved.body)
    elapsed = datetime.fromisoformat(after["now"][:-1]) - datetime.fromisoformat(before["now"][:-1])
    assert after["advanced_seconds"] == 2 * 86400 and 2 * 86400 <= elapsed.total_seconds() < 2 * 86400 + 60
