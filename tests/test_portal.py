"""POST /api/portal against the fake Stripe."""

import dataclasses

import pytest

from pulse import db
from pulse import subscriptions as subs
from pulse.models import Customer
from tests.billing_support import add_customer, checkout_body
from tests.fake_stripe import FAKE_SECRET_KEY
from tests.support import body_of


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides()


def portal_body(**changes):
    body = {"external_user_id": "user-1", "return_url": "https://app.test/account"}
    body.update(changes)
    return {key: value for key, value in body.items() if value is not None}


@pytest.mark.gen_test
async def test_portal_for_a_checked_out_user(api, fake_stripe):
    assert (await api("POST", "/api/checkout", checkout_body())).code == 200
    response = await api("POST", "/api/portal", portal_body())
    assert response.code == 200, response.body
    body = body_of(response)
    assert list(body) == ["url"] and body["url"].startswith("https://billing.stripe.com/")
    params = fake_stripe.calls("POST", "/v1/billing_portal/sessions")[0][2]
    assert params == {"customer": next(iter(fake_stripe.customers)), "return_url": "https://app.test/account"}


@pytest.mark.gen_test
async def test_unknown_user_is_404(api, fake_stripe, project, make_project):
    other = make_project("Other")
    add_customer(other.project, "user-1", stripe_customer_id="cus_other")  # another project's user
    add_customer(project.project, "no-stripe-yet", stripe_customer_id=None)
    for user in ("user-1", "no-stripe-yet"):
        response = await api("POST", "/api/portal", portal_body(external_user_id=user))
        assert response.code == 404
        assert body_of(response)["error"]["code"] == "not_found"
    assert fake_stripe.requests == []


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "body,status,field",
    [
        ({"return_url": "https://app.test"}, 422, "external_user_id"),
        ({"external_user_id": "user-1"}, 422, "return_url"),
        ({"external_user_id": "", "return_url": "https://app.test"}, 400, "external_user_id"),
        ({"external_user_id": 5, "return_url": "https://app.test"}, 400, "external_user_id"),
        ({"external_user_id": "user-1", "return_url": "/account"}, 400, "return_url"),
        ({"external_user_id": "user-1", "return_url": "mailto:a@b.test"}, 400, "return_url"),
    ],
)
async def test_validation(api, fake_stripe, body, status, field):
    response = await api("POST", "/api/portal", body)
    assert response.code == status
    error = body_of(response)["error"]
    assert error["field"] == field and error["code"] == ("missing_field" if status == 422 else "invalid_field")


@pytest.mark.gen_test
async def test_stripe_error_is_502(api, fake_stripe, project):
    assert (await api("POST", "/api/checkout", checkout_body())).code == 200
    fake_stripe.fail_next(1, status=400, path="/v1/billing_portal", message="Something broke: sk_test_leak")
    response = await api("POST", "/api/portal", portal_body())
    assert response.code == 502
    error = body_of(response)["error"]
    assert error["code"] == "stripe_error" and "Something broke" in error["message"]
    assert error["stripe_request_id"].startswith("req_")
    assert FAKE_SECRET_KEY.encode() not in response.body and b"sk_test_leak" not in response.body


@pytest.mark.gen_test
async def test_customer_unknown_to_stripe_is_404_and_unlinked(api, fake_stripe, project):
    """Deleted in Stripe before its customer.deleted arrived: 404 with a clear message, not 502 forever."""
    add_customer(project.project, "user-1", stripe_customer_id="cus_gone_from_stripe")
    for attempt in (1, 2):
        response = await api("POST", "/api/portal", portal_body())
        assert response.code == 404, attempt
        error = body_of(response)["error"]
        assert error["code"] == "not_found" and "no longer exists in Stripe" in error["message"]
        assert "POST /api/checkout" in error["message"]
    assert len(fake_stripe.calls("POST", "/v1/billing_portal/sessions")) == 1  # the second never asked Stripe
    with db.block():
        customer = Customer.get(Customer.project == project.project, Customer.external_user_id == "user-1")
        assert customer.stripe_customer_id is None
        assert [(cid, why) for cid, why, _ in subs.previous_stripe_customers(customer)] == [
            ("cus_gone_from_stripe", "unknown to Stripe")
        ]
    # The next checkout makes a new Stripe customer; the portal then works again.
    assert (await api("POST", "/api/checkout", checkout_body())).code == 200
    response = await api("POST", "/api/portal", portal_body())
    assert response.code == 200, response.body
    assert fake_stripe.calls("POST", "/v1/billing_portal/sessions")[-1][2]["customer"] in fake_stripe.customers


@pytest.mark.gen_test
async def test_not_configured_is_503(api, app, fake_stripe, project):
    add_customer(project.project, "user-1")
    app.settings["config"] = dataclasses.replace(app.settings["config"], stripe_secret_key=None)
    response = await api("POST", "/api/portal", portal_body())
    assert response.code == 503
    assert body_of(response)["error"]["code"] == "stripe_not_configured"
