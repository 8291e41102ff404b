"""Per-endpoint event filters (Stripe's enabled_events): an endpoint receives only the types it chose."""

import asyncio
import json

import pytest
from playhouse.migrate import migrate as run_operations

from pulse import db, migrations
from pulse.models import Project, WebhookEndpoint
from tests.migration_support import back_to_version_1
from tests.stripe_events import customer_object, event, new_subscription
from tests.support import body_of
from tests.webhook_receiver import Receiver
from tests.webhook_support import add_endpoint, outgoing_overrides

config_overrides = pytest.fixture(outgoing_overrides)


@pytest.mark.gen_test(timeout=60)
async def test_an_endpoint_receives_only_the_event_types_it_enabled(
    http_client, base_url, fake_stripe, hooked, deliver, receiver, deliverer
):
    deletions = Receiver().start()
    try:
        every = await add_endpoint(http_client, base_url, hooked, receiver.url)
        assert every["enabled_events"] == ["*"]
        receiver.secret = every["secret"]
        only = await add_endpoint(http_client, base_url, hooked, deletions.url, enabled_events=["customer.deleted"])
        assert only["enabled_events"] == ["customer.deleted"]
        deletions.secret = only["secret"]

        session, sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id, email="a@x.test")
        await deliver(event("checkout.session.completed", session))
        fake_stripe.delete_customer(sub["customer"])
        await deliver(event("customer.deleted", customer_object(sub["customer"], "a@x.test")))
        await receiver.until(1, event_type="customer.deleted")
        (deleted,) = await deletions.until(1)
        assert deleted["type"] == "customer.deleted" and deleted["data"]["external_user_id"] == "user-1"
        assert {body["type"] for body in receiver.events()} == {
            "subscription.updated",
            "checkout.completed",
            "customer.deleted",
        }
        # An explicit test event reaches a filtered endpoint too.
        resp = await http_client.fetch(
            base_url + f"/api/webhook-endpoints/{only['id']}/test",
            method="POST",
            body="",
            headers={"X-API-Key": hooked.api_key.api_key},
        )
        assert resp.code == 202
        await deletions.until(2)
        await asyncio.sleep(0.3)
        assert [body["type"] for body in deletions.events()] == ["customer.deleted", "webhook.test"]
    finally:
        deletions.stop()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "value, message",
    [
        ([], "non-empty list"),
        ("*", "non-empty list"),
        ([1], "non-empty list"),
        (None, "list of event types"),
        (["invoice.paid"], "'invoice.paid' is not an event type"),
        (["webhook.test"], "is not an event type"),
    ],
)
async def test_enabled_events_are_checked(api, receiver, value, message):
    resp = await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url, "enabled_events": value})
    assert resp.code == 400, resp.body
    error = body_of(resp)["error"]
    assert error["field"] == "enabled_events" and message in error["message"]


@pytest.mark.gen_test(timeout=30)
async def test_enabled_events_are_stored_sorted_and_star_wins(api, receiver):
    chosen = ["subscription.updated", "customer.deleted", "subscription.updated"]
    first = body_of(
        await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url, "enabled_events": chosen})
    )
    assert first["enabled_events"] == ["customer.deleted", "subscription.updated"]
    body = {"url": receiver.url, "enabled_events": ["customer.deleted", "*"]}
    second = body_of(await api("POST", "/api/webhook-endpoints", json_body=body))
    assert second["enabled_events"] == ["*"]
    listed = body_of(await api("GET", "/api/webhook-endpoints"))["data"]
    assert [e["enabled_events"] for e in listed] == [first["enabled_events"], ["*"]]


def test_step_12_gives_existing_endpoints_every_event(db_url, monkeypatch):
    """An endpoint made before the filters existed keeps receiving everything."""
    db.bind(db_url)
    with db.block() as database:
        back_to_version_1(database)
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "STEPS", [step for step in migrations.STEPS if step[0] <= 11])
        migrations.migrate_database()
    with db.block() as database:
        # Step 10 creates the table from today's model: drop the column, as a version-11 database lacks it.
        run_operations(migrations._migrator(database).drop_column("webhook_endpoint", "enabled_events"))
        assert "enabled_events" not in {column.name for column in database.get_columns("webhook_endpoint")}
        project = Project.create(public_id="proj_v11", name="V11")
        mark = database.param
        database.execute_sql(
            "INSERT INTO webhook_endpoint (public_id, project_id, url, description, secret, enabled, created_at, "
            f"updated_at) VALUES ('we_old', {mark}, 'https://app.example/h', '', 'x', 1, {mark}, {mark})",
            (project.id, "2026-01-01 00:00:00", "2026-01-01 00:00:00"),
        )
    assert "outgoing webhook endpoints: enabled event types" in migrations.migrate_database()
    with db.block():
        assert WebhookEndpoint.get(WebhookEndpoint.public_id == "we_old").enabled_events == '["*"]'
    assert migrations.current_version() == migrations.LATEST


@pytest.mark.gen_test(timeout=60)
async def test_patch_changes_what_an_endpoint_receives_from_the_next_change_on(
    http_client, base_url, fake_stripe, hooked, deliver, receiver, deliverer
):
    created = await add_endpoint(http_client, base_url, hooked, receiver.url)
    receiver.secret = created["secret"]
    headers = {"X-API-Key": hooked.api_key.api_key, "Content-Type": "application/json"}

    async def patch(path, body):
        return await http_client.fetch(
            base_url + path, method="PATCH", headers=headers, body=json.dumps(body), raise_error=False
        )

    path = f"/api/webhook-endpoints/{created['id']}"
    resp = await patch(path, {"enabled_events": ["customer.deleted"], "description": "deletions only"})
    assert resp.code == 200, resp.body
    changed = body_of(resp)
    assert changed["enabled_events"] == ["customer.deleted"] and changed["description"] == "deletions only"
    for body, field in (
        ({"enabled_events": []}, "enabled_events"),
        ({"enabled_events": "*"}, "enabled_events"),
        ({"description": 5}, "description"),
        ({"url": "https://elsewhere.example/"}, "url"),
    ):
        refused = await patch(path, body)
        assert refused.code == 400 and body_of(refused)["error"]["field"] == field, refused.body
    assert (await patch("/api/webhook-endpoints/we_missing", {"description": "x"})).code == 404

    session, _sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id)
    await deliver(event("checkout.session.completed", session))  # subscription.updated, checkout.completed
    resp = await http_client.fetch(base_url + path + "/test", method="POST", body="", headers=headers)
    assert resp.code == 202
    await receiver.until(1)
    await asyncio.sleep(0.3)
    assert [body["type"] for body in receiver.events()] == ["webhook.test"]
    assert (await patch(path, {"enabled_events": ["*"]})).code == 200
    with db.block():
        assert WebhookEndpoint.get().enabled_events == '["*"]'
