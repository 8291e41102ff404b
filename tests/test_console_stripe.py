"""Console features that talk to Stripe (the fake one) or stream data: check connection, exports."""

import csv
import io
import json

import pytest

from pulse import db
from pulse.models import Customer
from tests.console_support import Console, seed, text

config_overrides = pytest.fixture(lambda fake_stripe: fake_stripe.config_overrides(stripe_max_retries=0))


@pytest.fixture
def console(http_client, base_url):
    return Console(http_client, base_url)


@pytest.mark.gen_test(timeout=60)
async def test_check_connection_reports_the_account(console, project, fake_stripe):
    await console.login(project.admin.email)
    path = f"/console/p/{project.project.public_id}/settings/check"
    response = await console.post(path)
    assert response.code == 200
    assert f"Connected to Stripe account {fake_stripe.account['id']} (Fake Stripe)." in text(response)
    assert fake_stripe.calls("GET", "/v1/account")
    fake_stripe.fail_next(1, status=401, message="Invalid API Key provided: sk_test_********0000")
    response = await console.post(path)
    assert response.code == 200 and "Stripe refused the request" in text(response)
    assert "sk_test_fake_" not in text(response)


@pytest.mark.gen_test(timeout=60)
async def test_exports_stream_every_customer_as_csv_and_json(console, project):
    seed(project.project, count=3)
    with db.block():
        Customer.create(project=project.project, external_user_id="=cmd|' /C calc'!A0", email="x@example.com")
    await console.login(project.admin.email)
    base = f"/console/p/{project.project.public_id}/export"
    response = await console.get(base + "?format=csv")
    assert response.code == 200 and response.headers["Content-Type"].startswith("text/csv")
    assert response.headers["Content-Disposition"].startswith(
        f'attachment; filename="customers-{project.project.public_id}-'
    )
    assert response.body.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel then reads names as UTF-8
    rows = list(csv.reader(io.StringIO(response.body.decode("utf-8-sig"))))
    assert rows[0][:5] == ["external_user_id", "email", "stripe_customer_id", "created_at", "status"]
    assert len(rows) == 5 and rows[1][0] == "user-000" and rows[1][4] == "active" and rows[1][5] == "true"
    assert rows[4][0].startswith("'=")  # formula injection defused
    response = await console.get(base + "?format=json")
    data = json.loads(text(response))
    assert [c["external_user_id"] for c in data["customers"]][:3] == ["user-000", "user-001", "user-002"]
    assert data["customers"][0]["subscription"]["status"] == "active" and data["customers"][3]["subscription"] is None
    assert (await console.get(base + "?format=xml")).code == 400


@pytest.mark.gen_test(timeout=60)
async def test_reapply_that_fails_again_says_so_and_a_later_one_succeeds(console, project, fake_stripe):
    from pulse.models import Subscription, WebhookEvent
    from tests import stripe_events

    _, sub = stripe_events.new_subscription(fake_stripe, "zed", project_id=project.project.public_id)
    event = stripe_events.event("customer.subscription.updated", sub)
    with db.block():
        row = WebhookEvent.create(
            project=project.project,
            stripe_event_id=event["id"],
            type=event["type"],
            outcome="failed",
            error="Stripe APIError (http 500, code -)",
            object_id=sub["id"],
            payload=json.dumps(event),
        )
    await console.login(project.admin.email)
    path = f"/console/p/{project.project.public_id}/events/{row.id}/reapply"
    fake_stripe.fail_next(1, status=500, path="/v1/subscriptions")
    response = await console.post(path)
    assert response.code == 502 and "failed again" in text(response)
    with db.block():
        assert WebhookEvent.get_by_id(row.id).outcome == "failed"
    response = await console.post(path)
    assert response.code == 303
    with db.block():
        assert WebhookEvent.get_by_id(row.id).outcome == "processed"
        assert Subscription.get(Subscription.stripe_subscription_id == sub["id"]).status == "active"
