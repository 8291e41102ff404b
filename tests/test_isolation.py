"""Cross-project isolation: every route of the app, tried with another project's credentials.

Project A has customers, subscriptions, events and keys; project B's API key and B's admin (who is
not a member of A) try every API and console route against A's ids. Each answer must be 400/401/403/
404 or B's own data — never A's. Every route of the app must be classified below, so a new route
fails this test until someone decides how it is isolated.
"""

import re

import pytest

from pulse import db, plans
from pulse.models import ApiKey, Customer, WebhookEvent
from sandbox import api as sandbox_api
from sandbox import pages as sandbox_pages
from sandbox import stripe_api as sandbox_stripe_api
from tests.billing_support import checkout_body
from tests.console_support import PASSWORD, Console, seed
from tests.stripe_events import sign
from tests.support import body_of

WHSEC_A = "whsec_isolation_a_" + "e" * 20
WHSEC_B = "whsec_isolation_b_" + "f" * 20

# Routes that belong to no project (they take no project id and show nothing of one).
UNSCOPED = {
    "/api/health",
    "/status",
    "/console",
    "/console/",
    "/console/login",
    "/console/logout",
    "/console/account",
    "/console/.*",
    "/api/webhook/?",
}
# API routes scoped by the X-API-Key: exercised one by one below.
KEY_SCOPED = {
    "/api/checkout",
    "/api/portal",
    "/api/subscription",
    "/api/customers/export",
    "/api/plans",
    "/api/plans/(?P<plan_slug>[^/]+)",
    # issue 16: test_issue_16_routes_with_another_projects_key
    "/api/subscription/cancel",
    "/api/subscription/resume",
    "/api/subscription/change",
    "/api/subscription/change/preview",
    "/api/invoices",
    "/api/entitlements/(?P<feature>[^/]+)",
    "/api/webhook-endpoints",
    "/api/webhook-endpoints/([A-Za-z0-9_]{1,64})",
    "/api/webhook-endpoints/([A-Za-z0-9_]{1,64})/test",
    "/api/webhook-endpoints/([A-Za-z0-9_]{1,64})/enable",
    "/api/webhook-endpoints/([A-Za-z0-9_]{1,64})/deliveries/([A-Za-z0-9_]{1,40})/resend",
}
OTHER = {"/api/webhook/([A-Za-z0-9_-]{1,40})/?", r"/api/openapi\.json"}
# The simulator of sandbox projects: its Stripe API by the project's simulator key, its pages by session id,
# its sandbox API by a sandbox project's key; isolation tested in tests/test_sandbox.py
# (test_live_keys_never_reach_the_simulator_and_sandboxes_never_mix).
SANDBOX = {rule[0] for module in (sandbox_api, sandbox_stripe_api, sandbox_pages) for rule in module.default_handlers}


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides(stripe_max_retries=0)


@pytest.fixture
def tenants(make_project):
    a = make_project(name="Alpha", admin_email="alpha-admin@example.test", stripe_webhook_secret=WHSEC_A)
    b = make_project(name="Bravo", admin_email="bravo-admin@example.test", stripe_webhook_secret=WHSEC_B)
    customers, failed = seed(a.project, count=3)
    return a, b, customers, failed


def secrets_of(a, customers):
    """Strings from A that must never reach B."""
    values = [a.project.public_id, a.project.name, a.api_key.api_key, a.api_key.prefix, a.admin.email]
    for customer in customers:
        values += [customer.external_user_id, customer.email, customer.stripe_customer_id]
    return [v for v in values if v]


def assert_nothing_of(a_values, response, where):
    body = response.body.decode("utf-8", "replace")
    for value in a_values:
        assert value not in body, f"{where} leaked {value!r} of another project"


STATIC = {"/static/(.*)", "/(favicon\\.ico)", "/(robots\\.txt)"}


def test_every_route_is_classified(app):
    patterns = {rule.matcher.regex.pattern.rstrip("$") for rule in app.wildcard_router.rules}
    console_project = {p for p in patterns if "(proj_" in p}
    unknown = patterns - UNSCOPED - KEY_SCOPED - OTHER - SANDBOX - console_project - STATIC
    assert not unknown, f"classify these routes in tests/test_isolation.py: {sorted(unknown)}"


def fill(pattern, project_id, key_id, event_id, user):
    """A concrete path for a console route pattern, pointing at A's objects."""
    path = pattern.replace("(proj_[0-9A-Za-z]+)", project_id).replace("(key_[0-9A-Za-z]+)", key_id)
    path = path.replace("([0-9]+)", str(event_id)).replace("([^/]+)", user)
    path = path.replace("(rotate|revoke)", "revoke")
    assert "(" not in path, path
    return path


@pytest.mark.gen_test(timeout=60)
async def test_console_routes_of_another_project_are_forbidden(app, tenants, http_client, base_url):
    a, b, customers, failed = tenants
    with db.block():
        key_id = ApiKey.get(ApiKey.project == a.project).public_id
    a_values = [v for v in secrets_of(a, customers) if v != a.project.public_id]
    console = Console(http_client, base_url)
    response = await console.login(b.admin.email, PASSWORD)
    assert response.code in (302, 303), response.body
    # B's own dashboard works: the session is real.
    assert (await console.get(f"/console/p/{b.project.public_id}/")).code == 200
    index = await console.get("/console/")
    assert_nothing_of(secrets_of(a, customers), index, "/console/")
    tried = 0
    for rule in app.wildcard_router.rules:
        pattern = rule.matcher.regex.pattern.rstrip("$")
        if "(proj_" not in pattern:
            continue
        path = fill(pattern, a.project.public_id, key_id, failed.id, customers[0].external_user_id)
        handler = rule.target
        for method in ("get", "post"):
            if getattr(handler, method) is getattr(handler.__mro__[-2], method, None):
                continue
            response = await (
                console.get(path)
                if method == "get"
                else console.post(path, {"grace": "0", "secret_key": "sk_test_evil", "policy": "deny"})
            )
            assert response.code in (403, 404), f"{method.upper()} {path} -> {response.code}"
            assert_nothing_of(a_values, response, f"{method.upper()} {path}")
            tried += 1
    assert tried >= 10
    # And nothing changed in A.
    with db.block():
        assert ApiKey.get(ApiKey.project == a.project).revoked_at is None
        assert WebhookEvent.get_by_id(failed.id).outcome == "failed"


@pytest.mark.gen_test(timeout=60)
async def test_api_routes_with_another_projects_key(api, app, tenants, fake_stripe, http_client, base_url):
    a, b, customers, failed = tenants
    a_values = secrets_of(a, customers)
    user = customers[0].external_user_id
    key_b = b.api_key.api_key

    response = await api("GET", f"/api/subscription?external_user_id={user}", key=key_b)
    assert response.code == 404, response.body
    assert_nothing_of(a_values, response, "GET /api/subscription")

    response = await api("POST", "/api/portal", {"external_user_id": user, "return_url": "https://b.test/"}, key=key_b)
    assert response.code == 404, response.body
    assert_nothing_of(a_values, response, "POST /api/portal")

    # Checkout for the same external id under B makes B's own customer; A's is untouched.
    response = await api(
        "POST", "/api/checkout", checkout_body(external_user_id=user, email="b-user@b.test"), key=key_b
    )
    assert response.code == 200, response.body
    assert_nothing_of(a_values[3:], response, "POST /api/checkout")
    with db.block():
        mine = Customer.get(Customer.project == b.project, Customer.external_user_id == user)
        theirs = Customer.get(Customer.project == a.project, Customer.external_user_id == user)
    assert mine.stripe_customer_id != theirs.stripe_customer_id
    assert (theirs.email, theirs.stripe_customer_id) == (customers[0].email, customers[0].stripe_customer_id)

    for fmt in ("json", "csv"):
        response = await api("GET", f"/api/customers/export?format={fmt}", key=key_b)
        if response.code == 404 and b"No such endpoint" in response.body:
            continue  # the export API has not landed in this tree
        assert response.code == 200, response.body
        assert_nothing_of(
            [c.email for c in customers] + [c.stripe_customer_id for c in customers], response, f"export {fmt}"
        )

    # A's plan catalog: B sees none of it and cannot delete it.
    with db.block():
        plans.learn_pair(a.project, "price_alpha_secret", "alpha-gold")
    response = await api("GET", "/api/plans", key=key_b)
    assert response.code == 200 and b"alpha" not in response.body
    assert (await api("DELETE", "/api/plans/alpha-gold", key=key_b)).code == 404
    with db.block():
        assert plans.catalog_of(a.project) == {"price_alpha_secret": "alpha-gold"}

    # A's webhook endpoint does not accept B's signing secret.
    body = (
        '{"id":"evt_cross","object":"event","type":"customer.updated","data":{"object":{"id":"cus_seed0",'
        '"object":"customer","email":"hijacked@evil.test"}}}'
    )
    response = await http_client.fetch(
        base_url + f"/api/webhook/{a.project.public_id}",
        method="POST",
        body=body,
        raise_error=False,
        headers={"Stripe-Signature": sign(body, WHSEC_B), "Content-Type": "application/json"},
    )
    assert response.code == 400, response.body
    assert body_of(response)["error"]["code"] == "invalid_signature"
    with db.block():
        assert Customer.get_by_id(customers[0].id).email == customers[0].email
        assert (
            not WebhookEvent.select()
            .where(WebhookEvent.stripe_event_id == "evt_cross", WebhookEvent.outcome == "processed")
            .exists()
        )


@pytest.mark.gen_test(timeout=60)
async def test_issue_16_routes_with_another_projects_key(api, app, tenants):
    """Lifecycle, invoices, entitlements and webhook endpoints: B's key reaches none of A's."""
    from pulse import endpoints, outbox
    from pulse.models import WebhookDelivery

    a, b, customers, failed = tenants
    a_values = secrets_of(a, customers)
    user = customers[0].external_user_id
    key_b = b.api_key.api_key
    for method, path, data in (
        ("POST", "/api/subscription/cancel", {"external_user_id": user}),
        ("POST", "/api/subscription/resume", {"external_user_id": user}),
        ("POST", "/api/subscription/change", {"external_user_id": user, "stripe_price_id": "price_x"}),
        ("POST", "/api/subscription/change/preview", {"external_user_id": user, "stripe_price_id": "price_x"}),
        ("GET", f"/api/invoices?external_user_id={user}", None),
        ("GET", f"/api/entitlements/api_access?external_user_id={user}", None),
    ):
        response = await api(method, path, data, key=key_b)
        assert response.code == 404, (path, response.body)
        assert_nothing_of(a_values, response, f"{method} {path}")
    with db.block(), db.transaction():
        endpoint, secret = endpoints.create_endpoint(
            a.project, "https://alpha.example.com/hooks", app.settings["secret_box"], app.settings["config"]
        )
        outbox.send_test(a.project, endpoint)
        delivery = WebhookDelivery.get(WebhookDelivery.endpoint == endpoint)
    listed = await api("GET", "/api/webhook-endpoints", key=key_b)
    assert listed.code == 200 and b"alpha.example.com" not in listed.body
    base = f"/api/webhook-endpoints/{endpoint.public_id}"
    for method, path in (
        ("GET", base),
        ("DELETE", base),
        ("PATCH", base),
        ("POST", base + "/test"),
        ("POST", base + "/enable"),
        ("POST", f"{base}/deliveries/{delivery.id}/resend"),
    ):
        body = {"POST": {}, "PATCH": {"enabled_events": ["customer.deleted"]}}.get(method)
        response = await api(method, path, body, key=key_b)
        assert response.code == 404, (method, path, response.body)
        assert b"alpha.example.com" not in response.body and secret.encode() not in response.body
    with db.block():
        assert endpoints.get_endpoint(a.project, endpoint.public_id).enabled_events == '["*"]'
        assert WebhookDelivery.select().where(WebhookDelivery.endpoint == endpoint).count() == 1


@pytest.mark.gen_test(timeout=30)
async def test_bad_keys_are_401_everywhere(api, tenants):
    a, b, customers, failed = tenants
    user = customers[0].external_user_id
    forged = "pp_live_" + "A" * 40
    near = a.api_key.api_key[:-1] + ("x" if a.api_key.api_key[-1] != "x" else "y")
    for key in (forged, near, a.api_key.api_key.lower(), "Bearer " + a.api_key.api_key, "", "x" * 300):
        for method, path, data in (
            ("GET", f"/api/subscription?external_user_id={user}", None),
            ("POST", "/api/portal", {"external_user_id": user, "return_url": "https://x.test/"}),
            ("POST", "/api/checkout", checkout_body(external_user_id=user)),
            ("GET", "/api/customers/export?format=csv", None),
            ("GET", "/api/plans", None),
            ("PUT", "/api/plans/pro", {"stripe_price_ids": []}),
            ("POST", "/api/subscription/cancel", {"external_user_id": user}),
            ("GET", f"/api/invoices?external_user_id={user}", None),
            ("GET", f"/api/entitlements/x?external_user_id={user}", None),
            ("GET", "/api/webhook-endpoints", None),
        ):
            response = await api(method, path, data, key=key or "", headers={} if key else {"X-API-Key": ""})
            if response.code == 404 and b"No such endpoint" in response.body:
                continue
            assert response.code == 401, (key[:12], path, response.code)
            assert re.search(rb"cus_seed|person\d@", response.body) is None
