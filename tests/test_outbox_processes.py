"""The outbox across real server processes: kill -9 mid-delivery, and two processes sharing one outbox."""

import json

import pytest

from pulse import db
from pulse.models import WebhookDelivery
from tests.live_server import LiveServer
from tests.webhook_receiver import Receiver, all_delivered

ENV = {
    "PULSE_WEBHOOK_ALLOW_LOOPBACK": "1",
    "PULSE_WEBHOOK_TIMEOUT": "1",
    "PULSE_WEBHOOK_RETRY_BASE": "0.1",
    "PULSE_WEBHOOK_POLL": "0.1",
    "PULSE_FORCE_HTTPS": "0",
}


def api(server, method, path, key, body=None):
    headers = {"X-API-Key": key}
    if body is not None:
        headers["Content-Type"] = "application/json"
    status, _, raw = server.request(method, path, json.dumps(body) if body is not None else None, headers)
    return status, json.loads(raw)


def endpoint(server, key, receiver):
    status, created = api(server, "POST", "/api/webhook-endpoints", key, {"url": receiver.url})
    assert status == 201, created
    receiver.secret = created["secret"]
    return created["id"]


def queue_test(server, key, endpoint_id):
    status, body = api(server, "POST", f"/api/webhook-endpoints/{endpoint_id}/test", key, {})
    assert status == 202, body
    return body["webhook_id"]


@pytest.fixture
def receivers():
    started = []

    def make():
        started.append(Receiver().start())
        return started[-1]

    yield make
    for receiver in started:
        receiver.stop()


def test_kill_9_mid_delivery_loses_nothing_and_repeats_only_the_same_webhook_id(db_url, receivers):
    receiver = receivers()
    first = LiveServer(db_url, env=ENV).start()
    try:
        key = first.create_project("Killed")["api_key"]
        endpoint_id = endpoint(first, key, receiver)
        receiver.mode = "hang"
        hung = queue_test(first, key, endpoint_id)
        assert receiver.hanging.wait(10), "the first delivery never arrived"
        later = [queue_test(first, key, endpoint_id) for _ in range(2)]
    finally:
        first.kill()  # SIGKILL while its request is in flight
    receiver.mode = "ok"
    receiver.release.set()
    with LiveServer(db_url, env=ENV) as second:
        received = receiver.wait_for(3, timeout=20)
        all_delivered(db_url, 3)
        assert second.healthy()
    assert [webhook_id for webhook_id, _ in receiver.received] == [hung, *later]
    assert [body["id"] for body in received] == [hung, *later]
    # The message in flight at the kill went out twice, both times as the same message; the others once.
    sent = [webhook_id for webhook_id, _ in receiver.attempts]
    assert sent == [hung, hung, *later]
    db.bind(db_url)
    with db.block():
        assert [(d.status, d.attempts) for d in WebhookDelivery.select().order_by(WebhookDelivery.id)] == [
            ("succeeded", 2),
            ("succeeded", 1),
            ("succeeded", 1),
        ]
    db.database.close()


def test_two_processes_share_one_outbox_without_sending_twice(db_url, receivers):
    apps = [receivers() for _ in range(3)]
    live = [LiveServer(db_url, env=ENV).start() for _ in range(2)]
    try:
        key = live[0].create_project("Shared")["api_key"]
        endpoint_ids = [endpoint(live[0], key, receiver) for receiver in apps]
        queued = {endpoint_id: [] for endpoint_id in endpoint_ids}
        for n in range(30):  # through either process in turn: each wakes its own loop at once
            endpoint_id = endpoint_ids[n % 3]
            queued[endpoint_id].append(queue_test(live[n % 2], key, endpoint_id))
        for receiver in apps:
            receiver.wait_for(10, timeout=30)
        all_delivered(db_url, 30)
        for receiver, endpoint_id in zip(apps, endpoint_ids, strict=True):
            assert [webhook_id for webhook_id, _ in receiver.received] == queued[endpoint_id]
            assert [webhook_id for webhook_id, _ in receiver.attempts] == queued[endpoint_id]
            assert not receiver.rejected
    finally:
        for server in live:
            server.stop()
    db.bind(db_url)
    with db.block():
        rows = list(WebhookDelivery.select())
        assert len(rows) == 30 and {(d.status, d.attempts) for d in rows} == {("succeeded", 1)}
        assert len({d.lease_owner for d in rows}) == 2, "both processes delivered"
    db.database.close()
