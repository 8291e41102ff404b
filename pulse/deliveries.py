"""The outbox's delivery rows: claiming due ones under a lease, recording attempts, backoff, purging.

pulse.delivery's loop calls these in short transactions, never across a send. Only the oldest pending
delivery of an (endpoint, order key) is claimable, so one customer's messages arrive in order.
"""

import logging
import random
from collections.abc import Collection
from typing import Any

import peewee as pw

from pulse.config import Config
from pulse.db import transaction, utcnow
from pulse.models import WebhookDelivery, WebhookEndpoint, WebhookMessage
from pulse.outbox import FAILED, PENDING, SUCCEEDED, now_ms

log = logging.getLogger("pulse.delivery")

MAX_BACKOFF_S = 6 * 3600
# One endpoint's share of those: a slow endpoint (one tenant's) cannot hold every slot and delay the others.
MAX_IN_FLIGHT_PER_ENDPOINT = 8
KEEP_DAYS = 30  # delivered (or given up) messages are kept this long for the console and resends
Job = dict[str, Any]  # a claimed delivery: id, attempts, public_id, payload, created_ms, url, secret, endpoint_pk


def backoff_ms(attempts: int, base_s: float) -> int:
    """Delay before the next attempt after `attempts` failures: base x 2^(n-1), capped at 6 h, +-10 % jitter."""
    delay = min(base_s * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S)
    return int(delay * 1000 * random.uniform(0.9, 1.1))


def lease_ms(config: Config) -> int:
    """How long a claim holds: the whole attempt (DNS lookup included) is bounded by the timeout, plus a margin."""
    return int((config.webhook_timeout + 2) * 1000)


def claim(
    owner: str, limit: int, config: Config, exclude: Collection[int] = (), busy: dict[int, int] | None = None
) -> list[Job]:
    """Lease up to `limit` due deliveries for `owner` -> [(delivery id, message id, payload, url, secret token)].

    `busy` ({endpoint pk: sends in flight}, updated here) keeps each endpoint under MAX_IN_FLIGHT_PER_ENDPOINT.
    """
    busy = {} if busy is None else busy
    full = [endpoint for endpoint, count in busy.items() if count >= MAX_IN_FLIGHT_PER_ENDPOINT]
    now = now_ms()
    earlier = WebhookDelivery.alias("earlier")
    head = ~pw.fn.EXISTS(
        earlier.select(earlier.id).where(
            earlier.endpoint == WebhookDelivery.endpoint,
            earlier.order_key == WebhookDelivery.order_key,
            earlier.status == PENDING,
            earlier.id < WebhookDelivery.id,
        )
    )
    due = (
        WebhookDelivery.select(WebhookDelivery.id, WebhookDelivery.endpoint)
        .join(WebhookEndpoint)
        .where(
            WebhookDelivery.status == PENDING,
            WebhookDelivery.next_attempt_ms <= now,
            WebhookDelivery.lease_until_ms < now,
            WebhookEndpoint.enabled == True,  # noqa: E712
            head,
            *([WebhookDelivery.endpoint.not_in(full)] if full else []),
        )
        .order_by(WebhookDelivery.next_attempt_ms, WebhookDelivery.id)
        .limit(limit + len(exclude))
    )
    claimed: list[Job] = []
    for row in list(due):
        endpoint = row.endpoint_id
        if row.id in exclude or len(claimed) >= limit or busy.get(endpoint, 0) >= MAX_IN_FLIGHT_PER_ENDPOINT:
            continue
        with transaction():
            won = (
                WebhookDelivery.update(
                    lease_until_ms=now + lease_ms(config),
                    lease_owner=owner,
                    attempts=WebhookDelivery.attempts + 1,
                    last_attempt_at=utcnow(),
                )
                .where(
                    WebhookDelivery.id == row.id,
                    WebhookDelivery.status == PENDING,
                    WebhookDelivery.lease_until_ms < now,
                )
                .execute()
            )
        if won:
            found = (
                WebhookDelivery.select(
                    WebhookDelivery.id,
                    WebhookDelivery.attempts,
                    WebhookMessage.public_id,
                    WebhookMessage.payload,
                    WebhookMessage.created_ms,
                    WebhookEndpoint.url,
                    WebhookEndpoint.secret,
                    WebhookEndpoint.id.alias("endpoint_pk"),
                )
                .join(WebhookMessage)
                .switch(WebhookDelivery)
                .join(WebhookEndpoint)
                .where(WebhookDelivery.id == row.id)
                .dicts()
                .first()
            )
            if found:
                claimed.append(found)
                busy[endpoint] = busy.get(endpoint, 0) + 1
    return claimed


def record(
    job: Job,
    owner: str,
    config: Config,
    status_code: int | None = None,
    latency_ms: int | None = None,
    error: str | None = None,
) -> str:
    """Store an attempt's result: succeeded on 2xx, else retry later or fail for good; endpoints may be disabled."""
    now = now_ms()
    delivery_id = job["id"]
    common = dict(
        last_status_code=status_code, last_latency_ms=latency_ms, last_error=error and error[:255], lease_until_ms=0
    )  # lease_owner stays: who sent it last
    ok = status_code is not None and 200 <= status_code < 300
    with transaction():
        mine = (WebhookDelivery.id == delivery_id) & (WebhookDelivery.status == PENDING)
        if ok:
            WebhookDelivery.update(status=SUCCEEDED, delivered_at=utcnow(), **common).where(mine).execute()
            WebhookEndpoint.update(failing_since=None).where(
                WebhookEndpoint.id == job["endpoint_pk"], WebhookEndpoint.failing_since.is_null(False)
            ).execute()
            return SUCCEEDED
        expired = now - job["created_ms"] >= config.webhook_retry_for * 1000
        if expired:
            WebhookDelivery.update(status=FAILED, **common).where(mine).execute()
        else:
            WebhookDelivery.update(
                next_attempt_ms=now + backoff_ms(job["attempts"], config.webhook_retry_base), **common
            ).where(mine).execute()
        WebhookEndpoint.update(failing_since=now).where(
            WebhookEndpoint.id == job["endpoint_pk"], WebhookEndpoint.failing_since.is_null()
        ).execute()
        disabled = (
            WebhookEndpoint.update(
                enabled=False,
                updated_at=utcnow(),
                disabled_reason=(
                    f"every delivery failed for {config.webhook_disable_after:g} s (last: {error or status_code})"
                )[:255],
            )
            .where(
                WebhookEndpoint.id == job["endpoint_pk"],
                WebhookEndpoint.enabled == True,  # noqa: E712
                WebhookEndpoint.failing_since <= now - config.webhook_disable_after * 1000,
            )
            .execute()
        )
        if disabled:
            log.warning("webhook endpoint %s disabled after sustained failure", job["endpoint_pk"])
    return FAILED if expired else PENDING


def purge(now: int | None = None) -> int:
    """Delete messages older than KEEP_DAYS whose deliveries are all finished (the console shows the rest)."""
    cutoff = (now or now_ms()) - KEEP_DAYS * 86400 * 1000
    open_ = WebhookDelivery.select(WebhookDelivery.id).where(
        WebhookDelivery.message == WebhookMessage.id, WebhookDelivery.status == PENDING
    )
    with transaction():
        return WebhookMessage.delete().where(WebhookMessage.created_ms < cutoff, ~pw.fn.EXISTS(open_)).execute()
