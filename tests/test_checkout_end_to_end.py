"""Issue 10.5 and 10.7 end to end: `run.py serve`, real stripe-python, the fake Stripe over HTTP."""

import asyncio
import json

import pytest
import tornado.httpclient

from tests.billing_support import checkout_body
from tests.fake_stripe import FAKE_SECRET_KEY, StripeError
from tests.live_server import LiveServer


@pytest.fixture
def served(db_url, fake_stripe):
    env = {
        "PULSE_STRIPE_API_BASE": fake_stripe.url,
        "PULSE_STRIPE_SECRET_KEY": FAKE_SECRET_KEY,
        "PULSE_STRIPE_MAX_RETRIES": "0",
        "PULSE_RATE_LIMIT_AUTHENTICATED": "1000/minute",
    }
    server = LiveServer(db_url, env=env).start()  # blocks briefly; the fake is idle meanwhile
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
    key = server.create_project("EndToEnd")["api_key"]

    async def post(path, body):
        response = await client.fetch(
            server.base_url + path,
            method="POST",
            body=json.dumps(body),
            raise_error=False,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        return response.code, json.loads(response.body)

    yield post
    client.close()
    server.stop()


@pytest.mark.gen_test(timeout=60)
async def test_double_checkout_ends_in_one_payable_session(served, fake_stripe):
    answers = await asyncio.gather(*[served("/api/checkout", checkout_body(external_user_id="42")) for _ in range(2)])
    answers.append(await served("/api/checkout", checkout_body(external_user_id="42")))  # a third tab, later
    assert [status for status, _ in answers] == [200, 200, 200], answers
    paid = []
    for _, body in answers:
        try:
            paid.append(fake_stripe.complete_checkout(body["session_id"]))
        except StripeError:
            pass  # expired: Stripe takes no payment on it
    assert len(paid) == 1 and len(fake_stripe.subscriptions) == 1
    assert fake_stripe.sessions[answers[-1][1]["session_id"]]["status"] == "complete"  # the latest one
    assert len(fake_stripe.customers) == 1


@pytest.mark.gen_test(timeout=60)
async def test_refused_email_then_the_corrected_one(served, fake_stripe):
    fake_stripe.refuse(
        "email", "maria@.example.test", "Invalid email address: maria@.example.test", code="email_invalid"
    )
    status, body = await served("/api/checkout", checkout_body(external_user_id="u-100", email="maria@.example.test"))
    assert status == 400, body
    assert (body["error"]["code"], body["error"]["field"]) == ("invalid_field", "email")
    assert body["error"]["message"] == "Invalid email address: maria@.example.test"
    status, body = await served("/api/checkout", checkout_body(external_user_id="u-100", email="maria@example.test"))
    assert status == 200, body
    assert [c["email"] for c in fake_stripe.customers.values()] == ["maria@example.test"]
