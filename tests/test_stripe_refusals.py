"""Stripe refusing the tenant's input (issue 10.7) and Stripe's taste in the API (issue 13.8): 400 on our field."""

import dataclasses

import pytest

from pulse import db
from pulse.models import CheckoutLease, Customer
from tests.billing_support import checkout_body
from tests.support import body_of


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides()


def error_of(response):
    return body_of(response)["error"]


def customer_emails(fake):
    return [c[2].get("email") for c in fake.calls("POST", "/v1/customers") if c[1] == "/v1/customers"]


@pytest.mark.gen_test
async def test_email_refused_for_a_new_user_stores_nothing_and_the_fixed_retry_succeeds(api, fake_stripe):
    fake_stripe.refuse(
        "email", "maria@.example.test", "Invalid email address: maria@.example.test", code="email_invalid"
    )
    response = await api("POST", "/api/checkout", checkout_body(external_user_id="u-100", email="maria@.example.test"))
    assert response.code == 400, response.body
    error = error_of(response)
    assert error == {
        "status": 400,
        "code": "invalid_field",
        "field": "email",
        "message": "Invalid email address: maria@.example.test",
        "stripe_request_id": error["stripe_request_id"],
    }
    assert error["stripe_request_id"].startswith("req_")
    with db.block():
        assert Customer.select().count() == 0 and CheckoutLease.select().count() == 0
    assert fake_stripe.customers == {} and fake_stripe.sessions == {}
    response = await api("POST", "/api/checkout", checkout_body(external_user_id="u-100", email="maria@example.test"))
    assert response.code == 200, response.body
    assert customer_emails(fake_stripe) == ["maria@.example.test", "maria@example.test"]
    (cus,) = fake_stripe.customers.values()
    assert cus["email"] == "maria@example.test"
    with db.block():
        row = Customer.get(Customer.external_user_id == "u-100")
    assert row.email == "maria@example.test" and row.stripe_customer_id == cus["id"]


@pytest.mark.gen_test
async def test_email_change_refused_keeps_the_stored_email(api, fake_stripe):
    assert (await api("POST", "/api/checkout", checkout_body())).code == 200
    fake_stripe.refuse("email", "ada@..example.test", "Invalid email address: ada@..example.test", code="email_invalid")
    response = await api("POST", "/api/checkout", checkout_body(email="ada@..example.test"))
    assert response.code == 400 and error_of(response)["field"] == "email"
    (cus,) = fake_stripe.customers.values()
    with db.block():
        assert Customer.get().email == "ada@example.test" == cus["email"]
    assert len(fake_stripe.sessions) == 1 and fake_stripe.calls("POST", "/v1/checkout/sessions/") == []
    response = await api("POST", "/api/checkout", checkout_body(email="ada@new.example.test"))
    assert response.code == 200, response.body
    with db.block():
        assert Customer.get().email == "ada@new.example.test" == fake_stripe.customer(cus["id"])["email"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "stripe_param,value,field,changes",
    [
        ("success_url", "https://app.test/ok", "success_url", {"success_url": "https://app.test/ok"}),
        ("cancel_url", "https://app.test/no", "cancel_url", {"cancel_url": "https://app.test/no"}),
        ("subscription_data[trial_period_days]", "30", "trial_days", {"trial_days": 30}),
        ("line_items[0][price]", "price_archived", "stripe_price_id", {"stripe_price_id": "price_archived"}),
    ],
)
async def test_each_session_field_stripe_refuses_is_named(api, fake_stripe, stripe_param, value, field, changes):
    fake_stripe.refuse(stripe_param, value, f"Stripe does not accept {value} here.")
    response = await api("POST", "/api/checkout", checkout_body(**changes))
    assert response.code == 400, response.body
    error = error_of(response)
    assert (error["code"], error["field"], error["message"]) == (
        "invalid_field",
        field,
        f"Stripe does not accept {value} here.",
    )
    assert fake_stripe.sessions == {}


@pytest.mark.gen_test
async def test_a_param_we_did_not_take_from_the_tenant_stays_502(api, fake_stripe):
    fake_stripe.refuse("mode", "subscription", "Subscriptions are not enabled on this account.")
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 502 and error_of(response)["code"] == "stripe_error"
    assert "Subscriptions are not enabled" in error_of(response)["message"]


@pytest.mark.gen_test
async def test_portal_return_url_refused_is_400_on_return_url(api, fake_stripe):
    assert (await api("POST", "/api/checkout", checkout_body())).code == 200
    fake_stripe.refuse("return_url", "https://app.test/internal", "Not a valid URL")
    response = await api(
        "POST", "/api/portal", {"external_user_id": "user-1", "return_url": "https://app.test/internal"}
    )
    assert response.code == 400
    assert (error_of(response)["field"], error_of(response)["message"]) == ("return_url", "Not a valid URL")


# ---------------------------------------------------------------- stripe_price_id: any id Stripe accepts as a price


@pytest.mark.gen_test
@pytest.mark.parametrize("price_id", ["price_1PgafmB7WZ01zgkW6dKueIc5", "plan_H1x2y3", "gold-monthly", "pro"])
async def test_prices_and_legacy_plan_ids_are_accepted(api, fake_stripe, price_id):
    fake_stripe.strict_prices = True
    fake_stripe.add_price(price_id)
    response = await api("POST", "/api/checkout", checkout_body(stripe_price_id=price_id))
    assert response.code == 200, response.body
    assert fake_stripe.calls("POST", "/v1/checkout/sessions")[0][2]["line_items"][0]["price"] == price_id


@pytest.mark.gen_test
async def test_an_id_stripe_does_not_know_is_its_400_on_our_field(api, fake_stripe):
    fake_stripe.strict_prices = True
    response = await api("POST", "/api/checkout", checkout_body(stripe_price_id="plan_gone"))
    assert response.code == 400
    assert error_of(response)["field"] == "stripe_price_id"
    assert error_of(response)["message"] == "No such price: 'plan_gone'"


@pytest.mark.gen_test
@pytest.mark.parametrize("price_id", ["prod_NWjs8kKbJWmuuc", "price_", "plan_", "price_a b", "price_\x01", "x" * 256])
async def test_ids_that_cannot_be_a_price_are_refused_before_stripe(api, fake_stripe, price_id):
    response = await api("POST", "/api/checkout", checkout_body(stripe_price_id=price_id))
    assert response.code == 400 and error_of(response)["field"] == "stripe_price_id"
    assert fake_stripe.requests == []


# ---------------------------------------------------------------- unknown body fields, 503 message


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "path,body",
    [
        ("/api/checkout", checkout_body(trial_day=14)),
        ("/api/portal", {"external_user_id": "user-1", "return_url": "https://app.test/", "trial_day": 14}),
    ],
)
async def test_unknown_body_field_is_400_like_stripe(api, fake_stripe, path, body):
    response = await api("POST", path, body)
    assert response.code == 400
    assert error_of(response) == {
        "status": 400,
        "code": "invalid_field",
        "message": "unknown parameter: trial_day",
        "field": "trial_day",
    }
    assert fake_stripe.requests == []


@pytest.mark.gen_test
async def test_not_configured_names_the_fix(api, app, fake_stripe):
    app.settings["config"] = dataclasses.replace(app.settings["config"], stripe_secret_key=None)
    error = error_of(await api("POST", "/api/checkout", checkout_body()))
    assert error["code"] == "stripe_not_configured"
    assert "run.py set-stripe" in error["message"] and "PULSE_STRIPE_SECRET_KEY" in error["message"]
