"""One slow endpoint (one tenant's app) never holds every delivery slot of a process: the others keep flowing."""

import asyncio
import time

import pytest

from pulse import db, outbox
from pulse.delivery import MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_ENDPOINT
from pulse.models import WebhookEndpoint
from tests.support import body_of
from tests.webhook_receiver import Receiver

config_overrides = pytest.fixture(
    lambda: {"webhook_allow_loopback": True, "webhook_timeout": 20.0, "webhook_poll": 0.1}
)


@pytest.mark.gen_test(timeout=60)
async def test_a_hanging_endpoint_gets_its_share_and_the_others_are_not_delayed(
    api, project, make_project, http_client, base_url, receiver, deliverer
):
    slow = Receiver().start()
    try:
        other = make_project(name="Other")
        created = body_of(await api("POST", "/api/webhook-endpoints", json_body={"url": slow.url}))
        slow.secret, slow.mode = created["secret"], "hang"
        fast = body_of(
            await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url}, key=other.api_key.api_key)
        )
        receiver.secret = fast["secret"]
        with db.block():
            hanging = WebhookEndpoint.get(WebhookEndpoint.public_id == created["id"])
            with db.transaction():
                for n in range(MAX_IN_FLIGHT + 8):  # one per customer: each is the head of its order
                    outbox.enqueue(project.project, "webhook.test", {"n": n}, f"cus:{n}", endpoints=[hanging])
        for _ in range(300):
            if len(slow.attempts) >= MAX_IN_FLIGHT_PER_ENDPOINT:
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await api("POST", f"/api/webhook-endpoints/{fast['id']}/test", key=other.api_key.api_key)
        (body,) = await receiver.until(1, timeout=5)
        assert body["type"] == "webhook.test" and time.monotonic() - started < 3  # not after the 20 s timeout
        await asyncio.sleep(0.3)
        assert len(slow.attempts) == MAX_IN_FLIGHT_PER_ENDPOINT and len(deliverer.in_flight) == len(slow.attempts)
    finally:
        slow.stop()
