"""POST /api/checkout against the fake Stripe, on SQLite and MySQL."""

import asyncio
import dataclasses

import pytest

from pulse import db, projects
from pulse.billing import customer_idempotency_key
from pulse.models import Customer, Project
from tests.billing_support import DROP, add_customer, add_subscription, checkout_body
from tests.fake_stripe import FAKE_SECRET_KEY
from tests.support import body_of


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides()


def error_of(response):
    return body_of(response)["error"]


@pytest.mark.gen_test
async def test_checkout_creates_customer_and_subscription_session(api, fake_stripe, project):
    response = await api("POST", "/api/checkout", checkout_body(trial_days=14, interval="yearly"))
    assert response.code == 200, response.body
    body = body_of(response)
    assert set(body) == {"url", "session_id"}
    session = fake_stripe.session(body["session_id"])
    assert body["url"] == session["url"]
    with db.block():
        row = Customer.get(Customer.external_user_id == "user-1")
    assert row.stripe_customer_id and row.email == "ada@example.test"
    cus = fake_stripe.customer(row.stripe_customer_id)
    pid = project.project.public_id
    assert cus["email"] == "ada@example.test"
    assert cus["metadata"] == {"pulse_project_id": pid, "external_user_id": "user-1"}
    assert session["mode"] == "subscription" and session["customer"] == row.stripe_customer_id
    assert session["client_reference_id"] == "user-1"
    assert session["success_url"] == "https://app.test/welcome" and session["cancel_url"] == "https://app.test/pricing"
    meta = {
        "pulse_project_id": pid,
        "external_user_id": "user-1",
        "plan_slug": "pro",
        "interval": "yearly",
        "stripe_price_id": "price_pro_monthly",
    }
    assert session["metadata"] == meta
    params = fake_stripe.calls("POST", "/v1/checkout/sessions")[0][2]
    assert params["line_items"] == [{"price": "price_pro_monthly", "quantity": "1"}]
    assert params["subscription_data"] == {"metadata": meta, "trial_period_days": "14"}
    sub = fake_stripe.complete_checkout(body["session_id"])
    assert sub["metadata"] == meta and sub["status"] == "trialing"


@pytest.mark.gen_test
async def test_defaults_monthly_and_no_trial(api, fake_stripe):
    response = await api("POST", "/api/checkout", checkout_body(interval=None))
    assert response.code == 200, response.body
    params = fake_stripe.calls("POST", "/v1/checkout/sessions")[0][2]
    assert params["metadata"]["interval"] == "monthly"
    assert "trial_period_days" not in params["subscription_data"]


REQUIRED = ["external_user_id", "email", "plan_slug", "stripe_price_id", "success_url", "cancel_url"]


@pytest.mark.gen_test
@pytest.mark.parametrize("field", REQUIRED)
@pytest.mark.parametrize("absent", [DROP, None])
async def test_missing_required_field(api, fake_stripe, field, absent):
    response = await api("POST", "/api/checkout", checkout_body(**{field: absent}))
    assert response.code == 422
    assert error_of(response) == {
        "status": 422,
        "code": "missing_field",
        "message": f"{field} is required",
        "field": field,
    }
    assert fake_stripe.requests == []


INVALID = [
    ("external_user_id", ""),
    ("external_user_id", "x" * 256),
    ("external_user_id", 42),
    ("external_user_id", ["a"]),
    ("email", "not-an-email"),
    ("email", "a@b"),
    ("email", "a b@c.test"),
    ("email", 7),
    ("email", ""),
    ("email", "a@" + "b" * 250 + ".test"),
    ("plan_slug", ""),
    ("plan_slug", "p" * 101),
    ("plan_slug", 3),
    ("stripe_price_id", "prod_123"),
    ("stripe_price_id", "price_"),
    ("stripe_price_id", 12),
    ("success_url", "/relative"),
    ("success_url", "ftp://files.test/x"),
    ("success_url", "javascript:alert(1)"),
    ("success_url", "https://"),
    ("success_url", "https://app.test/a b"),
    ("cancel_url", "app.test/cancel"),
    ("cancel_url", {"u": 1}),
    ("interval", "weekly"),
    ("interval", "Monthly"),
    ("interval", 1),
    ("trial_days", 0),
    ("trial_days", 731),
    ("trial_days", -1),
    ("trial_days", "7"),
    ("trial_days", True),
    ("trial_days", 1.5),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("field,value", INVALID)
async def test_invalid_field(api, fake_stripe, field, value):
    response = await api("POST", "/api/checkout", checkout_body(**{field: value}))
    assert response.code == 400, (field, value)
    error = error_of(response)
    assert error["code"] == "invalid_field" and error["field"] == field and error["status"] == 400
    assert fake_stripe.requests == []


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "changes",
    [
        {"external_user_id": "x" * 255},
        {"external_user_id": "ünïcode 🙂 id with spaces"},
        {"external_user_id": "ada@example.test"},
        {"trial_days": 1},
        {"trial_days": 730},
        {"success_url": "http://localhost:3000/ok?x=1#y"},
        {"email": "Ada.Lovelace+pp@sub.example.co.uk"},
        {"success_url": "https://app.test/ok?session_id={CHECKOUT_SESSION_ID}"},
    ],
)
async def test_valid_edge_values(api, fake_stripe, changes):
    response = await api("POST", "/api/checkout", checkout_body(**changes))
    assert response.code == 200, response.body


@pytest.mark.gen_test
@pytest.mark.parametrize("length", [200, 201, 255])
async def test_long_ids_travel_in_metadata(api, fake_stripe, length):
    user = "u" * length
    response = await api("POST", "/api/checkout", checkout_body(external_user_id=user))
    assert response.code == 200, response.body
    session = fake_stripe.session(body_of(response)["session_id"])
    assert session["client_reference_id"] == (user if length <= 200 else None)  # Stripe's limit is 200
    assert session["metadata"]["external_user_id"] == user


@pytest.mark.gen_test
async def test_body_must_be_json_object(api, fake_stripe):
    response = await api("POST", "/api/checkout", body="[1, 2]", headers={"Content-Type": "application/json"})
    assert response.code == 400 and error_of(response)["code"] == "invalid_json"


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "stripe_status,past_due_policy,expected",
    [
        ("active", True, 409),
        ("trialing", True, 409),
        ("past_due", True, 409),
        ("past_due", False, 200),
        ("canceled", True, 200),
        ("incomplete", True, 200),
        ("unpaid", True, 200),
    ],
)
async def test_already_subscribed(api, fake_stripe, project, stripe_status, past_due_policy, expected):
    with db.block():
        Project.update(past_due_has_access=past_due_policy).where(Project.id == project.project.id).execute()
    customer = add_customer(project.project, "user-1", stripe_customer_id=None)
    add_subscription(customer, stripe_status)
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == expected, response.body
    if expected == 409:
        assert error_of(response)["code"] == "already_subscribed"
        assert fake_stripe.requests == []


@pytest.mark.gen_test
async def test_cancelling_subscription_still_blocks(api, fake_stripe, project):
    add_subscription(add_customer(project.project, "user-1"), "active", cancel_at_period_end=True)
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 409


@pytest.mark.gen_test
async def test_reuses_customer_and_updates_email(api, fake_stripe):
    first = body_of(await api("POST", "/api/checkout", checkout_body()))
    second = await api("POST", "/api/checkout", checkout_body(email="ada@new.example.test"))
    assert second.code == 200, second.body
    assert len(fake_stripe.customers) == 1
    cus_id = next(iter(fake_stripe.customers))
    assert fake_stripe.session(first["session_id"])["customer"] == cus_id
    assert fake_stripe.session(body_of(second)["session_id"])["customer"] == cus_id
    assert fake_stripe.customer(cus_id)["email"] == "ada@new.example.test"
    with db.block():
        assert Customer.get(Customer.external_user_id == "user-1").email == "ada@new.example.test"
    third = await api("POST", "/api/checkout", checkout_body(email="ada@new.example.test"))
    assert third.code == 200
    assert len(fake_stripe.calls("POST", f"/v1/customers/{cus_id}")) == 1  # unchanged email: no update call


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("latency", [0, 0.2])  # with latency, Stripe answers 409 "in progress" and clients retry
async def test_concurrent_checkouts_make_one_customer(api, fake_stripe, latency):
    fake_stripe.latency = latency
    responses = await asyncio.gather(*[api("POST", "/api/checkout", checkout_body()) for _ in range(20)])
    assert [r.code for r in responses] == [200] * 20, [r.body for r in responses if r.code != 200][:2]
    assert len(fake_stripe.customers) == 1
    with db.block():
        rows = list(Customer.select())
    assert len(rows) == 1 and rows[0].stripe_customer_id == next(iter(fake_stripe.customers))
    assert len({body_of(r)["session_id"] for r in responses}) == 20
    if latency:
        assert ("POST", "/v1/customers", 409) in fake_stripe.responses  # the race really happened


@pytest.mark.gen_test(timeout=30)
async def test_dropped_connection_is_retried_with_the_same_key(api, fake_stripe, project):
    fake_stripe.fail_next(1, kind="drop", path="/v1/customers")
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 200, response.body
    creates = fake_stripe.calls("POST", "/v1/customers")
    assert len(creates) == 2  # the lost answer, then the retry
    expected_key = customer_idempotency_key(project.project.public_id, "user-1")
    assert [c[3]["Idempotency-Key"] for c in creates] == [expected_key, expected_key]
    assert len(fake_stripe.customers) == 1


@pytest.mark.gen_test
async def test_stripe_error_is_502_with_message_and_request_id(api, fake_stripe):
    fake_stripe.fail_next(
        1, status=400, path="/v1/checkout/sessions", message="No such price: 'price_pro_monthly'", method="POST"
    )
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 502
    error = error_of(response)
    assert error["code"] == "stripe_error" and error["status"] == 502
    assert "No such price: 'price_pro_monthly'" in error["message"]
    assert error["stripe_request_id"].startswith("req_") and error["stripe_request_id"] in error["message"]
    assert FAKE_SECRET_KEY.encode() not in response.body


@pytest.mark.gen_test
async def test_rejected_key_never_leaks(api, fake_stripe):
    fake_stripe.api_keys = {"sk_test_someone_else"}
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 502
    assert "Invalid API Key" in error_of(response)["message"]
    assert FAKE_SECRET_KEY.encode() not in response.body and FAKE_SECRET_KEY[-4:].encode() not in response.body


@pytest.mark.gen_test(timeout=30)
async def test_stripe_unreachable_is_502(api, fake_stripe):
    fake_stripe.fail_next(3, kind="drop")
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 502
    assert error_of(response)["code"] == "stripe_error"


@pytest.mark.gen_test
async def test_not_configured_is_503(api, app, fake_stripe):
    app.settings["config"] = dataclasses.replace(app.settings["config"], stripe_secret_key=None)
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 503
    assert error_of(response)["code"] == "stripe_not_configured"
    assert fake_stripe.requests == []


@pytest.mark.gen_test
async def test_project_key_wins_over_deployment_key(api, fake_stripe, project, box):
    with db.block():
        projects.set_stripe(project.project, box, secret_key="sk_test_project_own_key")
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 200, response.body
    assert {r[3]["Authorization"] for r in fake_stripe.requests} == {"Bearer sk_test_project_own_key"}


@pytest.mark.gen_test
async def test_idempotency_key_header_reaches_stripe_derived(api, fake_stripe, project):
    response = await api("POST", "/api/checkout", checkout_body(), headers={"Idempotency-Key": "order-77"})
    assert response.code == 200, response.body
    sent = fake_stripe.calls("POST", "/v1/checkout/sessions")[0][3]["Idempotency-Key"]
    assert sent.startswith(f"pulse-cs-{project.project.public_id}-") and "order-77" not in sent


@pytest.mark.gen_test(timeout=30)
async def test_slow_stripe_does_not_block_the_hot_path(api, fake_stripe, project):
    add_subscription(add_customer(project.project, "someone-else"), "active")
    fake_stripe.latency = 0.3
    checkout = asyncio.ensure_future(api("POST", "/api/checkout", checkout_body()))
    while not fake_stripe.requests:  # the checkout is now waiting on Stripe
        await asyncio.sleep(0.01)
    read = await api("GET", "/api/subscription?external_user_id=someone-else")
    assert read.code == 200
    assert not checkout.done()  # answered while the checkout was still waiting on Stripe
    assert (await checkout).code == 200


@pytest.mark.gen_test
async def test_ids_differing_in_case_or_trailing_space_are_different_users(api, fake_stripe):
    # Tenants' ids are opaque: MySQL's default collation must not merge "user-1", "User-1" and "user-1 ".
    ids = ["user-1", "User-1", "user-1 ", "usér-1"]
    for user in ids:
        response = await api("POST", "/api/checkout", checkout_body(external_user_id=user))
        assert response.code == 200, (user, response.body)
    assert len(fake_stripe.customers) == 4
    with db.block():
        assert sorted(c.external_user_id for c in Customer.select()) == sorted(ids)


@pytest.mark.gen_test
async def test_past_due_policy_is_read_fresh(api, fake_stripe, project):
    add_subscription(add_customer(project.project, "user-1", stripe_customer_id=None), "past_due")
    assert (await api("POST", "/api/checkout", checkout_body())).code == 409  # the key (and project) now cached
    with db.block():
        Project.update(past_due_has_access=False).where(Project.id == project.project.id).execute()
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 200, response.body


@pytest.mark.gen_test
@pytest.mark.parametrize("email", ["ada@example.test", "ada@changed.example.test"])
async def test_customer_unknown_to_stripe_is_replaced_once(api, fake_stripe, project, email):
    # E.g. the project switched from a test-mode key to live: the stored cus_ id means nothing there.
    add_customer(project.project, "user-1", email="ada@example.test", stripe_customer_id="cus_from_test_mode")
    response = await api("POST", "/api/checkout", checkout_body(email=email))
    assert response.code == 200, response.body
    assert len(fake_stripe.customers) == 1
    new_id = next(iter(fake_stripe.customers))
    assert fake_stripe.session(body_of(response)["session_id"])["customer"] == new_id
    assert fake_stripe.customer(new_id)["email"] == email
    with db.block():
        assert Customer.get(Customer.external_user_id == "user-1").stripe_customer_id == new_id
    key = next(r[3]["Idempotency-Key"] for r in fake_stripe.requests if r[:2] == ("POST", "/v1/customers"))
    assert key.startswith(customer_idempotency_key(project.project.public_id, "user-1") + "-r")


@pytest.mark.gen_test
async def test_other_missing_resources_are_not_retried(api, fake_stripe, project):
    fake_stripe.fail_next(
        1, status=404, path="/v1/checkout/sessions", message="No such price: 'price_pro_monthly'", method="POST"
    )
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 502
    assert len(fake_stripe.calls("POST", "/v1/checkout/sessions")) == 1


@pytest.mark.gen_test
async def test_subscription_read_never_calls_stripe(api, fake_stripe, project):
    add_subscription(add_customer(project.project, "reader"), "active")
    for user in ("reader", "nobody"):
        await api("GET", "/api/subscription?external_user_id=" + user)
    assert fake_stripe.requests == []
