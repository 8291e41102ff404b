"""Concurrent checkouts for one new user, spread over several server processes, make one Stripe customer
and leave one open Checkout Session."""

import asyncio
import json

import pytest
import tornado.httpclient

from pulse import db
from pulse.models import Customer
from tests.billing_support import checkout_body
from tests.fake_stripe import FAKE_SECRET_KEY
from tests.live_server import LiveServer


@pytest.mark.slow
@pytest.mark.gen_test(timeout=90)
async def test_one_customer_across_processes(db_url, fake_stripe):
    fake_stripe.latency = 0.1  # keeps the racers' Stripe calls overlapping
    env = {
        "PULSE_STRIPE_API_BASE": fake_stripe.url,
        "PULSE_STRIPE_SECRET_KEY": FAKE_SECRET_KEY,
        "PULSE_STRIPE_MAX_RETRIES": "3",
        "PULSE_RATE_LIMIT_AUTHENTICATED": "1000/minute",
    }
    server = LiveServer(db_url, env=env, processes=3).start()  # blocks briefly; the fake is idle meanwhile
    client = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=30)
    try:
        key = server.create_project("Multi")["api_key"]
        body = json.dumps(checkout_body(external_user_id="racer"))
        responses = await asyncio.gather(
            *[
                client.fetch(
                    server.base_url + "/api/checkout",
                    method="POST",
                    body=body,
                    raise_error=False,
                    headers={"X-API-Key": key, "Content-Type": "application/json"},
                )
                for _ in range(24)
            ]
        )
    finally:
        client.close()
        server.stop()
    assert [r.code for r in responses] == [200] * 24, [r.body for r in responses if r.code != 200][:2]
    assert len(fake_stripe.customers) == 1
    assert len([s for s in fake_stripe.sessions.values() if s["status"] == "open"]) == 1  # one checkout can be paid
    db.bind(db_url)
    with db.block():
        rows = list(Customer.select().where(Customer.external_user_id == "racer"))
    assert len(rows) == 1 and rows[0].stripe_customer_id == next(iter(fake_stripe.customers))
    assert len([line for line in server.logs if "serving on http://" in line]) == 3  # three workers shared the port
