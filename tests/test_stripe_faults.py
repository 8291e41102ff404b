"""Stripe faults through the fake Stripe: timeouts, 5xx, 429, dropped connections, slow answers.

Each fault must end in bounded time, as 502 `stripe_error` (or success after retries), and a client
that retries must never leave duplicate Stripe customers or Checkout Sessions behind.
"""

import asyncio

import pytest

from tests.billing_support import checkout_body
from tests.fake_stripe import FAKE_SECRET_KEY
from tests.support import body_of

STRIPE_TIMEOUT = 0.5
# A request that takes longer than this has hung on Stripe (timeout x attempts is well under it).
BOUND = 10


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides(stripe_timeout=STRIPE_TIMEOUT, stripe_max_retries=1)


async def checkout(api, key="retry-1", **changes):
    return await api(
        "POST", "/api/checkout", checkout_body(**changes), headers={"Idempotency-Key": key}, request_timeout=BOUND
    )


def assert_stripe_error(response):
    assert response.code == 502, response.body
    error = body_of(response)["error"]
    assert error["code"] == "stripe_error" and error["status"] == 502
    assert FAKE_SECRET_KEY.encode() not in response.body
    assert b"Traceback" not in response.body


def assert_one_customer_one_session(fake):
    assert len(fake.customers) == 1, fake.customers
    sessions = [s for s in fake.sessions.values() if s.get("mode") == "subscription"]
    assert len(sessions) == 1, [s["id"] for s in sessions]


@pytest.mark.gen_test(timeout=60)
async def test_stripe_that_never_answers_in_time_is_a_bounded_502(api, fake_stripe):
    fake_stripe.latency = 3 * STRIPE_TIMEOUT * 2  # longer than every attempt's timeout
    assert_stripe_error(await checkout(api))
    # Stripe finished the work we stopped waiting for; let it, then the client retries.
    await asyncio.sleep(fake_stripe.latency + 0.2)
    fake_stripe.latency = 0
    response = await checkout(api)
    assert response.code == 200, response.body
    assert_one_customer_one_session(fake_stripe)


@pytest.mark.gen_test(timeout=60)
async def test_slow_but_timely_stripe_succeeds(api, fake_stripe):
    fake_stripe.latency = STRIPE_TIMEOUT / 3
    response = await checkout(api)
    assert response.code == 200, response.body
    assert_one_customer_one_session(fake_stripe)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_one_5xx_is_retried_invisibly(api, fake_stripe, status):
    fake_stripe.fail_next(1, status=status, path="/v1/checkout/sessions", method="POST")
    response = await checkout(api)
    assert response.code == 200, response.body
    assert_one_customer_one_session(fake_stripe)
    keys = [c[3].get("Idempotency-Key") for c in fake_stripe.calls("POST", "/v1/checkout/sessions")]
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]  # the retry reused Stripe's idempotency key


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("status", [500, 429])
async def test_persistent_failure_is_502_and_the_later_retry_makes_no_duplicates(api, fake_stripe, status):
    fake_stripe.fail_next(
        5, status=status, path="/v1/checkout/sessions", message="Stripe is having a moment (fake).", method="POST"
    )
    response = await checkout(api)
    assert_stripe_error(response)
    assert "Stripe is having a moment (fake)." in body_of(response)["error"]["message"]
    fake_stripe.faults.clear()
    response = await checkout(api)
    assert response.code == 200, response.body
    assert_one_customer_one_session(fake_stripe)


@pytest.mark.gen_test(timeout=60)
async def test_session_created_but_answer_lost_then_client_retries_same_idempotency_key(api, fake_stripe):
    """Stripe made the session, the connection dropped on every attempt: the client's retry gets that session."""
    fake_stripe.fail_next(2, kind="drop", path="/v1/checkout/sessions", method="POST")
    assert_stripe_error(await checkout(api))
    response = await checkout(api)
    assert response.code == 200, response.body
    assert_one_customer_one_session(fake_stripe)
    assert body_of(response)["session_id"] == next(iter(fake_stripe.sessions))


@pytest.mark.gen_test(timeout=60)
async def test_customer_create_lost_then_retried_makes_one_customer(api, fake_stripe):
    fake_stripe.fail_next(2, kind="drop", path="/v1/customers")
    assert_stripe_error(await checkout(api, key="a"))
    # Even a retry without the same Idempotency-Key reuses the one Stripe customer.
    response = await checkout(api, key="b")
    assert response.code == 200, response.body
    assert_one_customer_one_session(fake_stripe)


@pytest.mark.gen_test(timeout=60)
async def test_hot_path_is_served_while_stripe_hangs(api, fake_stripe, project):
    fake_stripe.latency = 3 * STRIPE_TIMEOUT * 2
    pending = asyncio.ensure_future(checkout(api))
    await asyncio.sleep(0.1)
    for _ in range(5):
        response = await api("GET", "/api/subscription?external_user_id=nobody", request_timeout=2)
        assert response.code == 404, response.body
    assert_stripe_error(await pending)
    await asyncio.sleep(fake_stripe.latency)


@pytest.mark.gen_test(timeout=60)
async def test_portal_with_stripe_down_is_502(api, fake_stripe):
    response = await checkout(api)
    assert response.code == 200, response.body
    fake_stripe.fail_next(5, kind="drop", path="/v1/billing_portal")
    response = await api(
        "POST", "/api/portal", {"external_user_id": "user-1", "return_url": "https://app.test/"}, request_timeout=BOUND
    )
    assert_stripe_error(response)
