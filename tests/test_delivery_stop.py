"""The delivery loop's stop() always returns, promptly: a server's shutdown never waits on it forever."""

import asyncio
import time

import pytest

from pulse import db, outbox
from pulse.delivery import Deliverer
from pulse.models import WebhookDelivery
from tests.support import body_of

config_overrides = pytest.fixture(
    lambda: {"webhook_allow_loopback": True, "webhook_timeout": 30.0, "webhook_poll": 5.0}
)


@pytest.mark.gen_test(timeout=60)
async def test_stop_returns_when_a_wake_meets_the_cancellation(app, http_server):
    """A wake that lands in the same turn as stop()'s cancel (a send finishing at shutdown) used to be
    swallowed with the cancel by Python 3.11's asyncio.wait_for: stop() then waited forever."""
    config, box = app.settings["config"], app.settings["secret_box"]
    for _ in range(5):
        loop = Deliverer(config, box).start()
        await asyncio.sleep(0.05)  # the loop has polled and now waits (webhook_poll: 5 s)
        outbox.wake()  # sets the loop's event on the next turn...
        await asyncio.sleep(0)  # ...and stop() cancels right after, in the same turn
        started = time.monotonic()
        await asyncio.wait_for(loop.stop(), 3)
        assert time.monotonic() - started < 1.0


@pytest.mark.gen_test(timeout=60)
async def test_stop_mid_send_returns_at_once_and_frees_the_lease(app, api, receiver):
    """A send to an endpoint that never answers is cancelled; its lease is released for another process."""
    loop = Deliverer(app.settings["config"], app.settings["secret_box"]).start()
    try:
        created = body_of(await api("POST", "/api/webhook-endpoints", json_body={"url": receiver.url}))
        receiver.secret, receiver.mode = created["secret"], "hang"
        await api("POST", f"/api/webhook-endpoints/{created['id']}/test")
        for _ in range(300):
            if receiver.hanging.is_set():
                break
            await asyncio.sleep(0.01)
        assert receiver.hanging.is_set() and len(loop.in_flight) == 1
    finally:
        started = time.monotonic()
        await asyncio.wait_for(loop.stop(), 10)
        elapsed = time.monotonic() - started
        receiver.release.set()
    assert elapsed < 1.0  # not the 30 s webhook timeout
    with db.block():
        row = WebhookDelivery.get()
    assert row.status == "pending" and row.lease_until_ms == 0 and row.attempts == 1
