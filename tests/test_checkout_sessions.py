"""One open Checkout Session per user (issue 10.5): a new checkout expires the earlier ones first."""

import asyncio
import dataclasses
from datetime import timedelta

import pytest

from pulse import db
from pulse.models import CheckoutLease, Customer
from tests import fake_stripe_objects as objects
from tests.billing_support import checkout_body
from tests.fake_stripe import StripeError
from tests.support import body_of


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides()


def open_sessions(fake):
    return [s["id"] for s in fake.sessions.values() if s["status"] == "open"]


def live_leases():
    """Leases still held: a released one stays as a lapsed row (it tells later checkouts that one ran)."""
    with db.block():
        return CheckoutLease.select().where(CheckoutLease.expires_at >= db.utcnow()).count()


@pytest.mark.gen_test
async def test_second_checkout_expires_the_first_so_only_one_can_be_paid(api, fake_stripe):
    first = body_of(await api("POST", "/api/checkout", checkout_body()))
    second = await api("POST", "/api/checkout", checkout_body(stripe_price_id="price_pro_yearly"))
    assert second.code == 200, second.body
    second = body_of(second)
    assert fake_stripe.session(first["session_id"])["status"] == "expired"
    assert open_sessions(fake_stripe) == [second["session_id"]]
    with pytest.raises(StripeError):
        fake_stripe.complete_checkout(first["session_id"])  # Stripe will not take payment on it
    fake_stripe.complete_checkout(second["session_id"])
    assert len(fake_stripe.subscriptions) == 1
    expire = fake_stripe.calls("POST", f"/v1/checkout/sessions/{first['session_id']}/expire")
    assert [c[3]["Idempotency-Key"] for c in expire] == [f"pulse-cx-{first['session_id']}"]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("latency", [0, 0.05])
async def test_concurrent_checkouts_leave_at_most_one_open_session(api, fake_stripe, latency):
    fake_stripe.latency = latency
    responses = await asyncio.gather(*[api("POST", "/api/checkout", checkout_body()) for _ in range(6)])
    assert [r.code for r in responses] == [200] * 6, [r.body for r in responses if r.code != 200][:2]
    assert len(fake_stripe.customers) == 1
    opened = open_sessions(fake_stripe)
    assert len(opened) == 1 and len(fake_stripe.sessions) == 6
    assert opened[0] in {body_of(r)["session_id"] for r in responses}
    assert live_leases() == 0  # every holder let go


@pytest.mark.gen_test
async def test_other_users_and_one_time_payment_sessions_are_left_alone(api, fake_stripe):
    mine = body_of(await api("POST", "/api/checkout", checkout_body()))
    theirs = body_of(await api("POST", "/api/checkout", checkout_body(external_user_id="user-2")))
    customer = fake_stripe.sessions[mine["session_id"]]["customer"]
    payment = fake_stripe._store(
        fake_stripe.sessions,
        objects.checkout_session({"mode": "payment", "customer": customer, "success_url": "https://app.test/"}),
    )  # the tenant's own one-off sale
    again = body_of(await api("POST", "/api/checkout", checkout_body()))
    assert sorted(open_sessions(fake_stripe)) == sorted([theirs["session_id"], payment["id"], again["session_id"]])


@pytest.mark.gen_test
async def test_a_session_paid_while_being_replaced_is_409_already_subscribed(api, fake_stripe):
    first = body_of(await api("POST", "/api/checkout", checkout_body()))
    dispatch = fake_stripe.dispatch

    def pay_just_before_expiry(method, path, params):
        if path.endswith("/expire"):
            fake_stripe.complete_checkout(first["session_id"])  # the user was quicker on the first tab
        return dispatch(method, path, params)

    fake_stripe.dispatch = pay_just_before_expiry
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 409 and body_of(response)["error"]["code"] == "already_subscribed"
    assert open_sessions(fake_stripe) == [] and len(fake_stripe.sessions) == 1


@pytest.mark.gen_test
async def test_retry_with_the_same_idempotency_key_gets_its_own_open_session_back(api, fake_stripe):
    fake_stripe.fail_next(3, kind="drop", path="/v1/checkout/sessions", method="POST")  # made, answers lost
    headers = {"Idempotency-Key": "order-9"}
    assert (await api("POST", "/api/checkout", checkout_body(), headers=headers)).code == 502
    response = await api("POST", "/api/checkout", checkout_body(), headers=headers)
    assert response.code == 200, response.body
    assert open_sessions(fake_stripe) == [body_of(response)["session_id"]] and len(fake_stripe.sessions) == 1


# ---------------------------------------------------------------- the per-user lease


@pytest.mark.gen_test(timeout=30)
async def test_a_live_lease_makes_the_waiter_answer_409_checkout_in_progress(api, app, fake_stripe, project):
    # Short Stripe timeouts make the lease's hold, and so a waiter's patience, about 2 seconds.
    app.settings["config"] = dataclasses.replace(app.settings["config"], stripe_timeout=0.1, stripe_max_retries=0)
    with db.block():
        CheckoutLease.create(
            project=project.project,
            external_user_id="user-1",
            token="someone-else",
            expires_at=db.utcnow() + timedelta(minutes=5),
        )
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 409, response.body
    assert body_of(response)["error"]["code"] == "checkout_in_progress" and response.headers["Retry-After"] == "1"
    assert fake_stripe.calls("POST", "/v1/checkout/sessions") == []
    with db.block():
        assert CheckoutLease.get().token == "someone-else"  # not ours to release


@pytest.mark.gen_test
async def test_a_lapsed_lease_of_a_dead_process_is_taken_over(api, fake_stripe, project):
    with db.block():
        CheckoutLease.create(
            project=project.project,
            external_user_id="user-1",
            token="crashed",
            expires_at=db.utcnow() - timedelta(seconds=1),
        )
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 200, response.body
    assert live_leases() == 0


@pytest.mark.gen_test
async def test_the_lease_is_released_when_stripe_refuses(api, fake_stripe):
    fake_stripe.refuse("success_url", "https://app.test/bad", "Not a valid URL")
    response = await api("POST", "/api/checkout", checkout_body(success_url="https://app.test/bad"))
    assert response.code == 400
    assert live_leases() == 0
    with db.block():
        assert Customer.select().count() == 1  # the customer Stripe accepted is kept


@pytest.mark.gen_test(timeout=30)
async def test_a_holder_whose_lease_was_taken_over_stops_before_opening_a_session(api, fake_stripe):
    # A returning user: the holder looks for their open sessions, a Stripe call made while holding the lease.
    first = body_of(await api("POST", "/api/checkout", checkout_body()))
    fake_stripe.latency = 1.1  # past RENEW_AFTER: the holder renews (and so checks) its hold before the next call
    dispatch = fake_stripe.dispatch

    def lapse_and_take_over(method, path, params):
        if method == "GET" and path.startswith("checkout/sessions"):
            with db.block():  # our hold lapsed while Stripe was slow, and another request took it
                CheckoutLease.update(token="another-request").execute()
        return dispatch(method, path, params)

    fake_stripe.dispatch = lapse_and_take_over
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 409 and body_of(response)["error"]["code"] == "checkout_in_progress"
    assert list(fake_stripe.sessions) == [first["session_id"]] == open_sessions(fake_stripe)  # left to the new holder
    with db.block():
        assert CheckoutLease.get().token == "another-request"  # theirs: left in place
