"""Delivering the simulator's events to the project's own webhook endpoint, signed as Stripe signs them.

Over real HTTP to this server's POST /api/webhook/{project_id}, so they take the same verification and
apply path as Stripe's. The first attempts go out in Stripe's order and are awaited (a sandbox action
returns once its webhooks were answered); a failed delivery is retried in the background on a
shortened version of Stripe's backoff.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import time

import httpx

log = logging.getLogger("sandbox.delivery")

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)  # Stripe backs off over 3 days; a sandbox over a minute
TIMEOUT = 10.0
_background: set = set()  # retry tasks, kept referenced until they finish


def signature(secret, payload, timestamp=None):
    """The Stripe-Signature header for `payload` (bytes): `t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


async def _attempt(client, url, secret, payload):
    try:
        response = await client.post(
            url,
            content=payload,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Stripe-Signature": signature(secret, payload),
            },
        )
    except httpx.HTTPError as exc:
        log.info("sandbox webhook delivery failed: %s", type(exc).__name__)
        return False
    return 200 <= response.status_code < 300


async def _retry(url, secret, payload, event_id, delays):
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for delay in delays:
            await asyncio.sleep(delay)
            if await _attempt(client, url, secret, payload):
                return
    log.warning("sandbox webhook %s not accepted after %d retries; dropped", event_id, len(delays))


async def deliver(url, secret, events, delays=RETRY_DELAYS):
    """POST each event in order; returns how many were accepted at the first attempt (the others are retried
    in the background after each of `delays` seconds, until accepted)."""
    accepted = 0
    if not events:
        return accepted
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        for event in events:
            payload = json.dumps(event, separators=(",", ":")).encode()
            if await _attempt(client, url, secret, payload):
                accepted += 1
                continue
            task = asyncio.ensure_future(_retry(url, secret, payload, event["id"], delays))
            _background.add(task)
            task.add_done_callback(_background.discard)
    return accepted
