"""Outgoing webhooks end to end: real server, fake Stripe, a real receiver that verifies with `standardwebhooks`."""

import asyncio

import pytest

from pulse import db
from pulse.models import WebhookDelivery, WebhookEndpoint
from tests.stripe_events import customer_object, event, new_subscription
from tests.support import body_of
from tests.webhook_receiver import settled
from tests.webhook_support import add_endpoint, outgoing_overrides

config_overrides = pytest.fixture(outgoing_overrides)


@pytest.mark.gen_test(timeout=40)
async def test_subscription_lifecycle_reaches_the_app_signed_in_order(
    http_client, base_url, fake_stripe, hooked, deliver, receiver, deliverer
):
    created = await add_endpoint(http_client, base_url, hooked, receiver.url)
    assert created["secret"].startswith("whsec_") and created["enabled"] is True
    receiver.secret = created["secret"]
    listed = body_of(
        await http_client.fetch(base_url + "/api/webhook-endpoints", headers={"X-API-Key": hooked.api_key.api_key})
    )
    assert [e["id"] for e in listed["data"]] == [created["id"]] and "secret" not in listed["data"][0]

    session, sub = new_subscription(
        fake_stripe, "user-1", project_id=hooked.project.public_id, email="one@example.test"
    )
    assert body_of(await deliver(event("checkout.session.completed", session)))["outcome"] == "processed"
    first, completed = (
        await receiver.until(1, event_type="subscription.updated"),
        await receiver.until(1, event_type="checkout.completed"),
    )
    update = first[0]["data"]
    assert update["object"]["status"] == "active" and update["object"]["external_user_id"] == "user-1"
    assert update["object"]["features"] == [] and "status" in update["changed"]
    assert completed[0]["data"]["checkout_session_id"] == session["id"]
    assert completed[0]["data"]["subscription"]["stripe_subscription_id"] == sub["id"]

    # Unchanged answer, no message: the same event again, and a re-read that changes nothing.
    current = fake_stripe.set_subscription(sub["id"], metadata={"note": "x"})
    await deliver(event("customer.subscription.updated", current))
    current = fake_stripe.set_subscription(sub["id"], cancel_at_period_end=True)
    await deliver(event("customer.subscription.updated", current))
    current = fake_stripe.set_subscription(sub["id"], cancel_at_period_end=False, status="past_due")
    await deliver(event("customer.subscription.updated", current))
    updates = await receiver.until(3, event_type="subscription.updated")
    await asyncio.sleep(0.3)
    updates = receiver.events("subscription.updated")
    assert [u["data"]["object"]["status"] for u in updates] == ["active", "cancelling", "past_due"]
    assert updates[1]["data"]["previous_attributes"]["status"] == "active"
    assert updates[1]["data"]["changed"] == ["status"]

    # Deleted in Stripe: the subscription ends (subscription.updated), then customer.deleted.
    fake_stripe.delete_customer(sub["customer"])
    await deliver(event("customer.deleted", customer_object(sub["customer"], "one@example.test")))
    deleted = await receiver.until(1, event_type="customer.deleted")
    assert deleted[0]["data"]["stripe_customer_id"] == sub["customer"]
    updates = await receiver.until(4, event_type="subscription.updated")
    assert updates[-1]["data"]["object"]["status"] == "cancelled"
    assert updates[-1]["data"]["object"]["stripe_customer_id"] is None
    # One customer, one order: what the app saw is the order of the changes; each webhook-id once.
    ids = [webhook_id for webhook_id, _ in receiver.received]
    assert len(ids) == len(set(ids)) and not receiver.rejected
    assert [b["type"] for b in receiver.events()] == [
        "subscription.updated",
        "checkout.completed",
        "subscription.updated",
        "subscription.updated",
        "subscription.updated",
        "customer.deleted",
    ]


@pytest.mark.gen_test(timeout=40)
async def test_endpoint_down_then_up_gets_everything_once_in_order(
    http_client, base_url, fake_stripe, hooked, deliver, receiver, deliverer
):
    created = await add_endpoint(http_client, base_url, hooked, receiver.url)
    receiver.secret = created["secret"]
    receiver.down()
    session, sub = new_subscription(fake_stripe, "user-1", project_id=hooked.project.public_id)
    await deliver(event("checkout.session.completed", session))
    statuses = []
    for change in (
        {"cancel_at_period_end": True},
        {"cancel_at_period_end": False, "status": "past_due"},
        {"status": "active"},
        {"quantity": 3},
    ):
        current = fake_stripe.set_subscription(sub["id"], **change)
        await deliver(event("customer.subscription.updated", current))
    for _ in range(500):  # several failed attempts while down
        with db.block():
            attempts = [d.attempts for d in WebhookDelivery.select()]
        if attempts and max(attempts) >= 2:
            break
        await asyncio.sleep(0.02)
    with db.block():
        assert max(attempts) >= 2 and not WebhookDelivery.select().where(WebhookDelivery.status != "pending").count()
    receiver.mode = "fail"  # up, but answering 503
    receiver.up()
    await asyncio.sleep(0.3)
    assert receiver.received == []
    receiver.mode = "ok"
    updates = await receiver.until(5, event_type="subscription.updated", timeout=20)
    await receiver.until(1, event_type="checkout.completed")
    await settled()
    statuses = [(u["data"]["object"]["status"], u["data"]["object"]["quantity"]) for u in updates]
    assert statuses == [("active", 1), ("cancelling", 1), ("past_due", 1), ("active", 1), ("active", 3)]
    ids = [webhook_id for webhook_id, _ in receiver.received]
    assert len(ids) == 6 == len(set(ids))
    with db.block():
        rows = list(WebhookDelivery.select())
        assert {d.status for d in rows} == {"succeeded"} and all(d.last_status_code == 204 for d in rows)
        assert all(d.last_latency_ms is not None for d in rows)


@pytest.mark.gen_test(timeout=30)
async def test_sustained_failure_disables_the_endpoint(
    http_client, base_url, fake_stripe, hooked, app, receiver, deliverer
):
    created = await add_endpoint(http_client, base_url, hooked, receiver.url)
    receiver.secret = created["secret"]
    receiver.mode = "fail"
    object.__setattr__(app.settings["config"], "webhook_disable_after", 0.5)
    resp = await http_client.fetch(
        f"{base_url}/api/webhook-endpoints/{created['id']}/test",
        method="POST",
        body="",
        headers={"X-API-Key": hooked.api_key.api_key},
    )
    assert resp.code == 202
    for _ in range(300):
        with db.block():
            endpoint = WebhookEndpoint.get(WebhookEndpoint.public_id == created["id"])
        if not endpoint.enabled:
            break
        await asyncio.sleep(0.05)
    assert not endpoint.enabled and "failed" in endpoint.disabled_reason
    found = body_of(
        await http_client.fetch(
            f"{base_url}/api/webhook-endpoints/{created['id']}", headers={"X-API-Key": hooked.api_key.api_key}
        )
    )
    assert found["enabled"] is False and found["deliveries"][0]["status"] == "pending"
    assert found["deliveries"][0]["last_status_code"] == 503
    receiver.mode = "ok"
    object.__setattr__(app.settings["config"], "webhook_disable_after", 259200.0)
    resp = await http_client.fetch(
        f"{base_url}/api/webhook-endpoints/{created['id']}/enable",
        method="POST",
        body="",
        headers={"X-API-Key": hooked.api_key.api_key},
    )
    assert body_of(resp)["enabled"] is True
    tests = await receiver.until(1, event_type="webhook.test")
    assert tests[0]["data"]["endpoint"] == created["id"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "url, message",
    [
        ("http://example.com/hook", "https"),
        ("https://10.0.0.5/hook", "private"),
        ("https://169.254.169.254/latest", "private or link-local"),
        ("https://user:pw@example.com/", "credentials"),
        ("ftp://example.com/", "https"),
        # Addresses that wrap or spell a private one (QA 2026-11-30 #11): judged by what they reach.
        ("https://[2002:a9fe:a9fe::1]/h", "private or link-local"),  # 6to4 of 169.254.169.254
        ("https://[2001:0:4136:e378:8000:63bf:3fff:fffa]/h", "private or link-local"),  # Teredo, client 192.0.0.5
        ("https://[64:ff9b::a9fe:a9fe]/h", "private or link-local"),  # NAT64 of 169.254.169.254
        ("https://[::ffff:10.0.0.1]/h", "private or link-local"),  # IPv4-mapped
        ("https://192.0.0.8/h", "private or link-local"),  # IETF protocol assignments
        ("https://167772161/h", "private or link-local"),  # 10.0.0.1 as one number
        ("https://0xa.1/h", "private or link-local"),  # 10.0.0.1 in hex, short form
        ("https://012.0.0.1/h", "private or link-local"),  # 10.0.0.1 in octal
        ("https://example.com:0/h", "port"),
    ],
)
async def test_endpoint_urls_are_checked(api, url, message):
    resp = await api("POST", "/api/webhook-endpoints", json_body={"url": url})
    assert resp.code == 400, resp.body
    error = body_of(resp)["error"]
    assert error["field"] == "url" and message in error["message"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("description", ["a\u0000b", "line\nbreak", "bell\u0007", "c1\u0085", 7, "x" * 201])
async def test_endpoint_descriptions_are_checked(api, description):
    url = "https://hooks.example.com/in"
    created = await api("POST", "/api/webhook-endpoints", json_body={"url": url, "description": description})
    assert created.code == 400 and body_of(created)["error"]["field"] == "description", created.body


@pytest.mark.gen_test(timeout=30)
async def test_loopback_refused_unless_allowed_and_checked_at_send_time(
    api, app, http_client, base_url, project, receiver, deliverer
):
    config = app.settings["config"]
    object.__setattr__(config, "webhook_allow_loopback", False)
    resp = await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url})
    assert resp.code == 400 and "loopback" in body_of(resp)["error"]["message"]
    object.__setattr__(config, "webhook_allow_loopback", True)
    # A DNS name is judged at each send: localhost resolves to loopback, refused once loopback is off.
    created = body_of(
        await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url.replace("127.0.0.1", "localhost")})
    )
    object.__setattr__(config, "webhook_allow_loopback", False)
    await api("POST", f"/api/webhook-endpoints/{created['id']}/test")
    for _ in range(200):  # attempts counts at the claim; last_error once the attempt is recorded
        found = body_of(await api("GET", f"/api/webhook-endpoints/{created['id']}"))
        if found["deliveries"][0]["last_error"]:
            break
        await asyncio.sleep(0.05)
    object.__setattr__(config, "webhook_allow_loopback", True)
    assert "loopback" in found["deliveries"][0]["last_error"] and receiver.attempts == []


@pytest.mark.gen_test(timeout=30)
async def test_redirects_are_not_followed_and_endpoints_delete(api, project, receiver, deliverer):
    created = body_of(await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url}))
    receiver.secret, receiver.mode = created["secret"], "redirect"
    await api("POST", f"/api/webhook-endpoints/{created['id']}/test")
    await receiver.until(1)
    await settled()
    found = body_of(await api("GET", f"/api/webhook-endpoints/{created['id']}"))
    assert found["deliveries"][0]["last_status_code"] == 302 and "redirect" in found["deliveries"][0]["last_error"]
    resp = await api("DELETE", f"/api/webhook-endpoints/{created['id']}")
    assert body_of(resp) == {"id": created["id"], "deleted": True}
    assert (await api("DELETE", f"/api/webhook-endpoints/{created['id']}")).code == 404
    assert body_of(await api("GET", "/api/webhook-endpoints"))["data"] == []


@pytest.mark.gen_test(timeout=30)
async def test_a_slow_endpoint_never_blocks_the_server(api, project, receiver, deliverer):
    import time

    created = body_of(await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url}))
    receiver.secret, receiver.mode = created["secret"], "hang"
    await api("POST", f"/api/webhook-endpoints/{created['id']}/test")
    for _ in range(200):
        if receiver.hanging.is_set():
            break
        await asyncio.sleep(0.01)
    assert receiver.hanging.is_set()
    started = time.monotonic()
    for _ in range(5):
        assert (await api("GET", "/api/webhook-endpoints")).code == 200
    assert time.monotonic() - started < 1.0  # answered while the delivery hangs
    for _ in range(300):  # the attempt gives up at PULSE_WEBHOOK_TIMEOUT (2 s here)
        found = body_of(await api("GET", f"/api/webhook-endpoints/{created['id']}"))
        if found["deliveries"][0]["last_error"]:
            break
        await asyncio.sleep(0.05)
    assert found["deliveries"][0]["last_error"] == "timed out" and found["deliveries"][0]["status"] == "pending"
    assert 1900 <= found["deliveries"][0]["last_latency_ms"] < 4000
    receiver.release.set()


@pytest.mark.gen_test(timeout=30)
async def test_finished_messages_are_purged_after_30_days_pending_ones_kept(api, project, receiver, deliverer):
    from pulse import delivery
    from pulse.models import WebhookMessage
    from pulse.outbox import now_ms

    created = body_of(await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url}))
    receiver.secret = created["secret"]
    await api("POST", f"/api/webhook-endpoints/{created['id']}/test")
    await receiver.until(1)
    await settled()
    receiver.mode = "fail"
    await api("POST", f"/api/webhook-endpoints/{created['id']}/test")
    with db.block():
        assert delivery.purge(now=now_ms() + 29 * 86400 * 1000) == 0
        assert delivery.purge(now=now_ms() + 31 * 86400 * 1000) == 1
        assert WebhookMessage.select().count() == 1 and WebhookDelivery.select().count() == 1
        assert WebhookDelivery.get().status == "pending"


@pytest.mark.parametrize(
    "host", ["10.0.0.5", "192.168.1.10", "169.254.169.254", "100.64.0.1", "[fd00::1]", "[fe80::1]"]
)
def test_private_and_link_local_targets_are_allowed_only_by_the_setting(host):
    """PULSE_WEBHOOK_ALLOW_PRIVATE=1 opens private and link-local targets; loopback keeps its own setting."""
    from pulse.config import load_config
    from pulse.endpoints import EndpointError, check_url
    from tests.support import TEST_SECRET

    def config(**settings):
        return load_config(environ={}, database_url="sqlite:///:memory:", secret_key=TEST_SECRET, **settings)

    url = f"https://{host}/hooks"
    with pytest.raises(EndpointError, match="private or link-local"):
        check_url(url, config())
    assert check_url(url, config(webhook_allow_private=True)) == url
    for loopback in ("127.0.0.1", "2130706433", "0x7f.1", "017700000001", "[::ffff:127.0.0.1]", "[64:ff9b::7f00:1]"):
        with pytest.raises(EndpointError, match="loopback"):
            check_url(f"https://{loopback}/hooks", config(webhook_allow_private=True))
    with pytest.raises(EndpointError, match="multicast"):
        check_url("https://224.0.0.1/hooks", config(webhook_allow_private=True))


@pytest.mark.gen_test(timeout=30)
async def test_a_url_without_a_host_is_refused_at_send_time():
    """resolve() refuses a URL with no host instead of resolving None to this machine (found by mypy)."""
    from pulse.config import load_config
    from pulse.delivery import Refused, resolve
    from tests.support import TEST_SECRET

    config = load_config(
        environ={}, database_url="sqlite:///:memory:", secret_key=TEST_SECRET, webhook_allow_loopback=True
    )
    with pytest.raises(Refused, match="no host"):
        await resolve("https:///hooks", config)
