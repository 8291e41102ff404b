"""No secret in the logs: a full flow against the real server at debug level, then grep its stderr.

The flow touches every place a secret passes through: the CLI (Stripe key, webhook secret,
admin password), API keys (valid, forged, near-miss), checkout and portal through the fake Stripe
(and a Stripe error), signed and badly signed webhooks, console sign-in (wrong and right password),
session cookies, settings changes with new Stripe secrets, connection check, logout.
"""

import re

import pytest
import tornado.httpclient

from tests.billing_support import checkout_body
from tests.console_support import Console
from tests.live_server import TEST_SECRET, LiveServer
from tests.stripe_events import body_of_event, new_subscription, sign

STRIPE_KEY = "sk_test_logcheck_" + "K9" * 14
NEW_STRIPE_KEY = "sk_test_rotated_" + "R7" * 14
WEBHOOK_SECRET = "whsec_logcheck_" + "W3" * 14
NEW_WEBHOOK_SECRET = "whsec_rotated_" + "Q5" * 14
DEPLOY_WEBHOOK_SECRET = "whsec_deploy_" + "D4" * 14
ADMIN_PASSWORD = "Tr0ub4dor&3-logcheck"
WRONG_PASSWORD = "hunter2-wrong-logcheck"


@pytest.mark.gen_test(timeout=120)
async def test_a_full_flow_logs_no_secret(tmp_path, fake_stripe):
    fake_stripe.api_keys = {STRIPE_KEY, NEW_STRIPE_KEY}
    server = LiveServer(
        f"sqlite:///{tmp_path / 'pulse.db'}",
        env={
            "PULSE_LOG_LEVEL": "debug",
            "PULSE_STRIPE_API_BASE": fake_stripe.url,
            "PULSE_STRIPE_WEBHOOK_SECRET": DEPLOY_WEBHOOK_SECRET,
            "PULSE_STRIPE_MAX_RETRIES": "0",
        },
    )
    created = server.create_project(
        "Logs",
        admin_email="logs@example.test",
        admin_password=ADMIN_PASSWORD,
        stripe_secret_key=STRIPE_KEY,
        stripe_webhook_secret=WEBHOOK_SECRET,
    )
    second_key = server.cli("create-api-key", created["project_id"], "--label", "second")["api_key"]
    project_id, api_key = created["project_id"], created["api_key"]
    server.start()
    http = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    cookies = set()
    try:

        async def call(method, path, body=None, key=api_key, headers=None):
            all_headers = {"X-API-Key": key, "Content-Type": "application/json", **(headers or {})}
            return await http.fetch(
                server.base_url + path,
                method=method,
                body=body,
                headers=all_headers,
                raise_error=False,
                follow_redirects=False,
            )

        import json

        ok = await call("POST", "/api/checkout", json.dumps(checkout_body()), headers={"Idempotency-Key": "log-1"})
        assert ok.code == 200, ok.body
        await call("POST", "/api/checkout", json.dumps(checkout_body(external_user_id="user-2")), key=second_key)
        await call("GET", "/api/subscription?external_user_id=user-1")
        await call("POST", "/api/portal", json.dumps({"external_user_id": "user-1", "return_url": "https://a.test/"}))
        fake_stripe.fail_next(
            1, status=400, path="/v1/checkout/sessions", message="No such price (fake)", method="POST"
        )
        await call("POST", "/api/checkout", json.dumps(checkout_body(external_user_id="user-3")))
        fake_stripe.api_keys = {NEW_STRIPE_KEY}  # Stripe now rejects the project's key: its message names it
        await call("POST", "/api/checkout", json.dumps(checkout_body(external_user_id="user-4")))
        fake_stripe.api_keys = {STRIPE_KEY, NEW_STRIPE_KEY}
        for bad in ("pp_live_" + "Z" * 40, api_key[:-2] + "zz", api_key + "x", "sk_live_" + "L" * 30):
            await call("GET", "/api/subscription?external_user_id=user-1", key=bad)

        session, _sub = new_subscription(fake_stripe, "user-5", project_id=project_id)
        event = body_of_event(fake_stripe.event("checkout.session.completed", session))
        for path, secret in (
            (f"/api/webhook/{project_id}", WEBHOOK_SECRET),
            ("/api/webhook", DEPLOY_WEBHOOK_SECRET),
            (f"/api/webhook/{project_id}", "whsec_wrong_" + "X" * 20),
        ):
            await http.fetch(
                server.base_url + path,
                method="POST",
                body=event,
                raise_error=False,
                headers={"Stripe-Signature": sign(event, secret), "Content-Type": "application/json"},
            )

        console = Console(http, server.base_url)
        await console.login("logs@example.test", WRONG_PASSWORD)
        response = await console.login("logs@example.test", ADMIN_PASSWORD)
        assert response.code in (302, 303), response.body
        cookies.update(v for k, v in console.cookies.items() if k != "_xsrf")
        assert cookies, "no session cookie was set"
        for page in ("/", "/keys", "/customers", "/events", "/settings", "/audit", "/export?format=csv"):
            await console.get(f"/console/p/{project_id}{page}")
        await console.post(
            f"/console/p/{project_id}/settings/stripe",
            {"stripe_secret_key": NEW_STRIPE_KEY, "stripe_webhook_secret": NEW_WEBHOOK_SECRET},
        )
        await console.post(f"/console/p/{project_id}/settings/check")
        await console.post(f"/console/p/{project_id}/keys", {"label": "from-console"})
        await console.post("/console/logout")
    finally:
        http.close()
        server.stop()

    logs = "\n".join(server.logs)
    # The grep must have something to grep: the requests above are all logged.
    for expected in ("/api/checkout", "/api/webhook", "/console/login", "/console/logout"):
        assert expected in logs, f"no log line for {expected}"
    secrets = {
        "Stripe secret key": STRIPE_KEY,
        "rotated Stripe key": NEW_STRIPE_KEY,
        "webhook secret": WEBHOOK_SECRET,
        "rotated webhook secret": NEW_WEBHOOK_SECRET,
        "deployment webhook secret": DEPLOY_WEBHOOK_SECRET,
        "admin password": ADMIN_PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "PULSE_SECRET_KEY": TEST_SECRET,
        "API key": api_key,
        "second API key": second_key,
    }
    secrets.update({f"session cookie {n}": value for n, value in enumerate(cookies)})
    for name, value in secrets.items():
        for fragment in {f for f in (value, value[-20:], value.split("_")[-1]) if len(f) >= 12}:
            assert fragment not in logs, f"the {name} appears in the server log"
    # At rest: the database files hold hashes and ciphertexts, never one of these values.
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("pulse.db*"))
    assert stored
    for name, value in secrets.items():  # session cookies included: the token is stored hashed
        assert value.encode() not in stored, f"the {name} is stored in clear in the database"
    # Nothing shaped like a full key leaks either, whoever's it is.
    shaped = re.findall(r"(pp_live_[0-9A-Za-z]{20,}|sk_(?:live|test)_[0-9A-Za-z_]{12,}|whsec_[0-9A-Za-z_]{12,})", logs)
    assert not shaped, shaped[:3]
