"""The fake Stripe server behaves like Stripe for the calls PaymentPulse makes, through stripe-python."""

import dataclasses
from collections import OrderedDict

import pytest
import stripe

from pulse import billing
from pulse.stripe_objects import plain
from sandbox.objects import decode_form
from tests.fake_stripe import FAKE_SECRET_KEY


@pytest.fixture
def client(fake_stripe, io_loop):
    made = []

    def factory(**kwargs):
        made.append(fake_stripe.client(**kwargs))
        return made[-1]

    yield factory
    for one in made:
        io_loop.run_sync(one._requestor._client.close_async)


def test_decode_form_nesting():
    params = decode_form(
        "metadata[a]=1&line_items[0][price]=price_x&line_items[0][quantity]=1"
        "&subscription_data[metadata][k]=v&subscription_data[trial_period_days]=7&email="
    )
    assert params == {
        "metadata": {"a": "1"},
        "line_items": [{"price": "price_x", "quantity": "1"}],
        "subscription_data": {"metadata": {"k": "v"}, "trial_period_days": "7"},
        "email": "",
    }


@pytest.mark.gen_test
async def test_customer_crud_and_list(client, fake_stripe):
    sc = client()
    made = [
        await sc.v1.customers.create_async(params={"email": f"u{i}@x.test", "metadata": {"n": str(i)}})
        for i in range(3)
    ]
    assert made[0].object == "customer" and made[0].metadata["n"] == "0"
    got = await sc.v1.customers.retrieve_async(made[1].id)
    assert got.email == "u1@x.test"
    updated = await sc.v1.customers.update_async(made[1].id, params={"email": "new@x.test", "metadata": {"m": "y"}})
    assert updated.email == "new@x.test" and plain(updated)["metadata"] == {"n": "1", "m": "y"}
    first = await sc.v1.customers.list_async(params={"limit": 2})
    assert [c.id for c in first.data] == [made[2].id, made[1].id] and first.has_more
    rest = await sc.v1.customers.list_async(params={"limit": 2, "starting_after": first.data[-1].id})
    assert [c.id for c in rest.data] == [made[0].id] and not rest.has_more
    with pytest.raises(stripe.InvalidRequestError) as caught:
        await sc.v1.customers.retrieve_async("cus_nope")
    assert caught.value.http_status == 404 and caught.value.code == "resource_missing"
    assert caught.value.request_id.startswith("req_")


@pytest.mark.gen_test
async def test_missing_key_is_401(fake_stripe, http_client):
    response = await http_client.fetch(fake_stripe.url + "/v1/customers", raise_error=False)
    assert response.code == 401
    assert b"did not provide an API key" in response.body


@pytest.mark.gen_test
async def test_idempotency_key_replays(client, fake_stripe):
    sc = client()
    one = await sc.v1.customers.create_async(params={"email": "a@x.test"}, options={"idempotency_key": "k1"})
    two = await sc.v1.customers.create_async(params={"email": "a@x.test"}, options={"idempotency_key": "k1"})
    assert one.id == two.id and len(fake_stripe.customers) == 1
    with pytest.raises(stripe.IdempotencyError):
        await sc.v1.customers.create_async(params={"email": "b@x.test"}, options={"idempotency_key": "k1"})


@pytest.mark.gen_test
async def test_checkout_complete_and_subscription_shapes(client, fake_stripe):
    sc = client()
    cus = await sc.v1.customers.create_async(params={"email": "a@x.test"})
    session = await sc.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "customer": cus.id,
            "client_reference_id": "u1",
            "line_items": [{"price": "price_pro", "quantity": 1}],
            "success_url": "https://a.test/ok",
            "metadata": {"interval": "yearly"},
            "subscription_data": {"metadata": {"plan_slug": "pro"}, "trial_period_days": 7},
        }
    )
    assert session.url.startswith("https://checkout.stripe.com/") and session.mode == "subscription"
    sub = fake_stripe.complete_checkout(session.id)
    assert sub["status"] == "trialing" and sub["metadata"] == {"plan_slug": "pro"}
    item = sub["items"]["data"][0]
    assert item["price"]["id"] == "price_pro" and item["price"]["recurring"]["interval"] == "year"
    assert item["current_period_end"] == sub["trial_end"] and "current_period_end" not in sub
    fetched = await sc.v1.subscriptions.retrieve_async(sub["id"])
    assert fetched.customer == cus.id
    old = fake_stripe.subscription(sub["id"], api_version="2024-06-20")
    assert old["current_period_end"] == item["current_period_end"]
    assert "current_period_end" not in old["items"]["data"][0]
    changed = fake_stripe.set_subscription(sub["id"], status="canceled")
    assert changed["canceled_at"] and fake_stripe.version(sub["id"]) == 2
    live = await sc.v1.subscriptions.list_async(params={"customer": cus.id})
    assert live.data == []
    every = await sc.v1.subscriptions.list_async(params={"customer": cus.id, "status": "all"})
    assert [s.id for s in every.data] == [sub["id"]]
    portal = await sc.v1.billing_portal.sessions.create_async(
        params={"customer": cus.id, "return_url": "https://a.test"}
    )
    assert portal.url.startswith("https://billing.stripe.com/")
    account = await sc.v1.accounts.retrieve_current_async()
    assert account.object == "account"


@pytest.mark.gen_test
async def test_faults_http_and_drop(client, fake_stripe):
    fake_stripe.fail_next(1, status=500)
    with pytest.raises(stripe.APIError) as caught:
        await client().v1.customers.create_async(params={"email": "a@x.test"})
    assert caught.value.http_status == 500 and caught.value.request_id
    fake_stripe.fail_next(1, kind="drop")
    with pytest.raises(stripe.APIConnectionError):
        await client().v1.customers.create_async(params={"email": "a@x.test"})
    assert len(fake_stripe.customers) == 1  # processed, then the answer was lost
    fake_stripe.fail_next(1, kind="drop", path="/v1/customers")
    retried = await client(max_network_retries=1).v1.customers.create_async(params={"email": "b@x.test"})
    posts = fake_stripe.calls("POST", "/v1/customers")
    assert posts[-1][3]["Idempotency-Key"] == posts[-2][3]["Idempotency-Key"]
    assert retried.id in fake_stripe.customers and len(fake_stripe.customers) == 2


@pytest.mark.gen_test
async def test_same_key_in_flight_is_409(client, fake_stripe):
    import asyncio

    fake_stripe.latency = 0.2
    sc = client()
    create = sc.v1.customers.create_async
    first = asyncio.ensure_future(create(params={"email": "a@x.test"}, options={"idempotency_key": "k"}))
    while not fake_stripe.requests:
        await asyncio.sleep(0.01)
    with pytest.raises(stripe.APIError) as caught:
        await create(params={"email": "a@x.test"}, options={"idempotency_key": "k"})
    assert caught.value.http_status == 409 and "in-progress" in caught.value.user_message
    made = await first
    again = await create(params={"email": "a@x.test"}, options={"idempotency_key": "k"})
    assert again.id == made.id and len(fake_stripe.customers) == 1


@pytest.mark.gen_test
async def test_old_api_version_shape_over_http(client, fake_stripe):
    fake_stripe.api_version = "2024-06-20"
    sc = client()
    cus = await sc.v1.customers.create_async(params={"email": "a@x.test"})
    session = await sc.v1.checkout.sessions.create_async(
        params={
            "mode": "subscription",
            "customer": cus.id,
            "line_items": [{"price": "price_a", "quantity": 1}],
            "success_url": "https://a.test/ok",
        }
    )
    sub = fake_stripe.complete_checkout(session.id, status="active")
    fetched = plain(await sc.v1.subscriptions.retrieve_async(sub["id"]))
    assert fetched["current_period_end"] > fetched["created"]
    assert "current_period_end" not in fetched["items"]["data"][0]


@pytest.mark.gen_test
async def test_gateway_reads_subscriptions_as_plain_dicts(fake_stripe, config):
    client = billing.client_for(dataclasses.replace(config, **fake_stripe.config_overrides()), FAKE_SECRET_KEY)
    cus = await client.v1.customers.create_async(params={"email": "a@x.test"})
    subs = []
    for _ in range(3):
        session = await client.v1.checkout.sessions.create_async(
            params={
                "mode": "subscription",
                "customer": cus.id,
                "line_items": [{"price": "price_a", "quantity": 1}],
                "success_url": "https://a.test/ok",
            }
        )
        subs.append(fake_stripe.complete_checkout(session.id))
    fake_stripe.set_subscription(subs[0]["id"], status="canceled")
    listed = await billing.list_subscriptions(client, cus.id)
    assert sorted(s["id"] for s in listed) == sorted(s["id"] for s in subs)
    assert all(type(s["items"]["data"][0]["price"]) in (dict, OrderedDict) for s in listed)  # no StripeObjects
    one = await billing.retrieve_subscription(client, subs[0]["id"])
    assert one["status"] == "canceled" and type(one["items"]) in (dict, OrderedDict)
    account = await billing.check_connection(client)
    assert account["id"].startswith("acct_") and account["name"] == "Fake Stripe"


@pytest.mark.gen_test
async def test_deleting_a_customer_cancels_its_subscriptions_and_leaves_a_tombstone(client, fake_stripe):
    from tests.stripe_events import new_subscription

    sc = client()
    session, sub = new_subscription(fake_stripe, "gone")
    deleted = await sc.v1.customers.delete_async(sub["customer"])
    assert (deleted.id, deleted.deleted) == (sub["customer"], True)
    again = await sc.v1.customers.retrieve_async(sub["customer"])  # Stripe still answers, with a tombstone
    assert again.deleted is True and not hasattr(again, "email")
    assert fake_stripe.subscription(sub["id"])["status"] == "canceled"
    with pytest.raises(stripe.InvalidRequestError) as err:  # any other use: No such customer
        await sc.v1.customers.update_async(sub["customer"], params={"email": "x@y.test"})
    assert err.value.http_status == 404 and err.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError) as err:
        await sc.v1.billing_portal.sessions.create_async(
            params={"customer": sub["customer"], "return_url": "https://app.test/"}
        )
    assert err.value.param == "customer"
    # A completed session carries the customer's details, as Stripe's does.
    assert session["customer_details"]["email"] == "gone@example.test"
    assert fake_stripe.session(session["id"])["customer_details"]["email"] == "gone@example.test"
