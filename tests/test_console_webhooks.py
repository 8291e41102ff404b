"""Console: the outgoing webhooks page (endpoints, secret shown once, deliveries, resend, test event, delete)."""

import re

import pytest

from pulse import db
from pulse.models import AuditLog, WebhookDelivery, WebhookEndpoint
from tests.console_support import Console, text
from tests.webhook_receiver import settled

config_overrides = pytest.fixture(
    lambda: {"webhook_allow_loopback": True, "webhook_retry_base": 0.05, "webhook_poll": 0.1}
)


@pytest.fixture
def console(http_client, base_url):
    return Console(http_client, base_url)


def url(project, suffix=""):
    return f"/console/p/{project.project.public_id}/{suffix}"


@pytest.mark.gen_test(timeout=60)
async def test_endpoints_deliveries_resend_and_test_event(console, project, receiver, deliverer):
    await console.login(project.admin.email)
    page = await console.get(url(project, "webhooks"))
    assert page.code == 200 and 'aria-current="page">Outgoing webhooks' in text(page)
    refused = await console.post(url(project, "webhooks"), {"url": "http://example.com/hook"})
    assert refused.code == 400 and "https" in text(refused)
    created = await console.post(url(project, "webhooks"), {"url": receiver.url, "description": "my app"})
    assert created.code == 201
    secret = re.search(r"whsec_[A-Za-z0-9+/=]+", text(created)).group(0)
    receiver.secret = secret
    page = text(await console.get(url(project, "webhooks")))
    assert receiver.url in page and secret not in page  # shown once
    with db.block():
        endpoint = WebhookEndpoint.get()
    tested = await console.post(url(project, "webhooks/test"), {"endpoint": endpoint.public_id})
    assert tested.code == 303
    (body,) = await receiver.until(1)
    assert body["type"] == "webhook.test"
    await settled()
    page = text(await console.get(url(project, "webhooks")))
    assert "webhook.test" in page and "succeeded" in page and "204" in page and " ms" in page
    with db.block():
        delivery = WebhookDelivery.get()
    resent = await console.post(url(project, "webhooks/resend"), {"delivery": str(delivery.id)})
    assert resent.code == 303
    await receiver.until(2)
    assert receiver.received[0][0] == receiver.received[1][0] == body["id"]  # the same webhook-id again
    assert (await console.post(url(project, "webhooks/resend"), {"delivery": "999999"})).code == 404
    asked = await console.post(url(project, "webhooks/delete"), {"endpoint": endpoint.public_id})
    assert asked.code == 200 and "Delete endpoint" in text(asked)
    done = await console.post(url(project, "webhooks/delete"), {"endpoint": endpoint.public_id, "confirm": "yes"})
    assert done.code == 303
    with db.block():
        assert WebhookEndpoint.select().count() == 0
        actions = [a.action for a in AuditLog.select().where(AuditLog.action.startswith("webhook_endpoint."))]
    assert actions == ["webhook_endpoint.created", "webhook_endpoint.deleted"]
    assert (await console.post(url(project, "webhooks/test"), {"endpoint": endpoint.public_id})).code == 404
    assert (await console.post(url(project, "webhooks"), {"url": receiver.url}, xsrf=False)).code == 403


@pytest.mark.gen_test(timeout=60)
async def test_the_form_chooses_the_event_types_an_endpoint_receives(console, project, receiver):
    """Ticked boxes become enabled_events; all ticked is every event ("*"), none ticked is refused."""
    await console.login(project.admin.email)
    page = text(await console.get(url(project, "webhooks")))
    assert page.count('name="enabled_events"') == 3 and page.count(" checked") == 3
    marker = {"choose_events": "1"}
    refused = await console.post(url(project, "webhooks"), {"url": receiver.url, **marker})
    assert refused.code == 400 and "at least one event type" in text(refused)
    chosen = ["customer.deleted", "subscription.updated"]
    created = await console.post(url(project, "webhooks"), {"url": receiver.url, "enabled_events": chosen, **marker})
    assert created.code == 201
    every = ["subscription.updated", "checkout.completed", "customer.deleted"]
    created = await console.post(url(project, "webhooks"), {"url": receiver.url, "enabled_events": every, **marker})
    assert created.code == 201
    with db.block():
        stored = [row.enabled_events for row in WebhookEndpoint.select().order_by(WebhookEndpoint.id)]
    assert stored == ['["customer.deleted", "subscription.updated"]', '["*"]']
    page = text(await console.get(url(project, "webhooks")))
    assert "customer.deleted, subscription.updated" in page and "all events" in page


@pytest.mark.gen_test(timeout=60)
async def test_an_endpoints_event_types_are_changed_in_place(console, project, receiver):
    await console.login(project.admin.email)
    assert (await console.post(url(project, "webhooks"), {"url": receiver.url})).code == 201
    with db.block():
        endpoint = WebhookEndpoint.get()
    assert endpoint.enabled_events == '["*"]'  # a form without the boxes (a script): every event
    target = url(project, "webhooks/events")
    refused = await console.post(target, {"endpoint": endpoint.public_id})
    assert refused.code == 400 and "at least one event type" in text(refused)
    saved = await console.post(target, {"endpoint": endpoint.public_id, "enabled_events": ["checkout.completed"]})
    assert saved.code == 303
    with db.block():
        assert WebhookEndpoint.get().enabled_events == '["checkout.completed"]'
        assert AuditLog.select().where(AuditLog.action == "webhook_endpoint.updated").count() == 1
    assert (await console.post(target, {"endpoint": "we_nope", "enabled_events": ["checkout.completed"]})).code == 404
