"""Stripe webhook deliveries: signature check, the exactly-once inbox, failures and re-apply (SPEC 4)."""

import asyncio
import concurrent.futures
import json
import logging
import re
from typing import Any

import peewee
import stripe

from pulse import billing, events
from pulse.config import Config, RateLimit
from pulse.db import DatabaseUnavailable, block, database, lock_timeout, locking, retryable, transaction, utcnow
from pulse.models import Project, WebhookEvent
from pulse.outcomes import Outcome
from pulse.ratelimit import Limiter, address_bucket
from pulse.security import SecretBox
from pulse.stripe_objects import JSON, customer_id_of, obj_of, stripe_id

log = logging.getLogger("pulse.webhooks")

TOLERANCE = 300
# Forged deliveries are answered 400 but only this many are recorded (security review L4/L10):
# per client address (IPv6 /64), and per project whatever the addresses, so rotating them
# cannot fill a project's event log either.
INVALID_RECORDS_PER_ADDRESS = RateLimit(60, 60)
INVALID_RECORDS_PER_PROJECT = RateLimit(120, 3600)
PROCESSED, IGNORED, FAILED = Outcome.PROCESSED, Outcome.IGNORED, Outcome.FAILED
INVALID_SIGNATURE = Outcome.INVALID_SIGNATURE
UNROUTED = (
    "no project: no pulse_project_id metadata names a project, and its Stripe customer is linked "
    "to a customer of no project (or of several)"
)
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


class WebhookError(Exception):
    """A delivery answered with an error envelope (the handler turns it into ApiError)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Duplicate(Exception):
    pass


# ---------------------------------------------------------------- verifying and parsing


def verify(raw: bytes, header: str | None, secret: str) -> str | None:
    """Check Stripe-Signature on the raw body; returns None when valid, else a short reason."""
    if not header:
        return "missing Stripe-Signature header"
    try:
        payload = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    try:
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=TOLERANCE)
    except stripe.SignatureVerificationError as exc:
        text = str(exc)
        if "timestamp outside" in text.lower():
            return "timestamp outside the tolerance zone"
        if "unable to extract" in text.lower() or "no signatures found with expected" in text.lower():
            return "malformed Stripe-Signature header"
        return "no matching v1 signature"
    return None


async def record_invalid(project: Project | None, reason: str, remote_ip: str | None, limiter: Limiter) -> None:
    """Keep a trace of a rejected delivery (no payload: it is unauthenticated input).

    Unsigned requests are not rate limited (Stripe's bursts must pass), so the trace is capped by
    `limiter` (the app's rate limiter, shared through Redis when configured) per client address
    and per project: a flood of forgeries cannot fill the table, whatever addresses it comes from.
    """
    ip = (remote_ip or "")[:64]
    scope = project.public_id if project is not None else "-"
    for key, rate in (
        ("webhook-invalid:ip:" + address_bucket(ip), INVALID_RECORDS_PER_ADDRESS),
        ("webhook-invalid:project:" + scope, INVALID_RECORDS_PER_PROJECT),
    ):
        if not (await limiter.hit(key, rate)).allowed:
            log.warning(
                "invalid webhook signature from %s not recorded (over %s for this %s): %s",
                ip,
                rate,
                key.split(":")[1],
                reason,
            )
            return
    with block():
        WebhookEvent.create(
            project=project, outcome=INVALID_SIGNATURE, error=reason[:200], remote_ip=ip or None, processed_at=utcnow()
        )


def parse(raw: bytes | str) -> JSON:
    """The event dict from a verified body, or WebhookError 400 `invalid_payload`."""
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
        raise WebhookError(400, "invalid_payload", "Event body is not valid JSON.") from None
    if not isinstance(event, dict):
        raise WebhookError(400, "invalid_payload", "Event body must be a JSON object.")
    if _SURROGATE_ESCAPE.search(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")):
        # "\udc00" alone is valid JSON but not text: storing or logging it ended in a 500 (review L2).
        try:
            json.dumps(event, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise WebhookError(
                400, "invalid_payload", "Event body contains an unpaired \\u surrogate escape."
            ) from None
    if not isinstance(event.get("id"), str) or not event["id"] or len(event["id"]) > 255:
        raise WebhookError(400, "invalid_payload", "Event has no id.")
    if not isinstance(event.get("type"), str) or not event["type"]:
        raise WebhookError(400, "invalid_payload", "Event has no type.")
    created = event.get("created")
    if created is not None and (isinstance(created, bool) or not isinstance(created, int) or not 0 <= created < 2**40):
        # Stored in a BIGINT and used for ordering: out of range, it crashed even the failure record.
        raise WebhookError(400, "invalid_payload", "Event created must be a Unix timestamp.")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise WebhookError(400, "invalid_payload", "Event has no data.object.")
    return event


# ---------------------------------------------------------------- the inbox


def _lookup(project: Project | None, event_id: str) -> peewee.ModelSelect:
    query = WebhookEvent.select().where(WebhookEvent.stripe_event_id == event_id)
    query = (
        query.where(WebhookEvent.project.is_null()) if project is None else query.where(WebhookEvent.project == project)
    )
    return query


def _row_fields(event: JSON, raw: str) -> dict[str, Any]:
    obj = obj_of(event)
    customer = customer_id_of(obj)
    return dict(
        stripe_event_id=event["id"],
        type=event["type"][:100],
        api_version=(event.get("api_version") or None) and str(event["api_version"])[:40],
        livemode=bool(event.get("livemode")),
        object_id=(stripe_id(obj.get("id")) or "")[:255] or None,
        stripe_customer_id=customer and str(customer)[:255],
        stripe_created=event.get("created") if isinstance(event.get("created"), int) else None,
        payload=raw,
    )


def _claim(project: Project | None, event: JSON, raw: str, remote_ip: str | None) -> WebhookEvent:
    """Insert the inbox row, or take over a failed one; raises _Duplicate when already handled."""
    try:
        with database.atomic():
            return WebhookEvent.create(
                project=project, outcome=Outcome.RECEIVED, remote_ip=remote_ip, **_row_fields(event, raw)
            )
    except peewee.IntegrityError:
        pass
    row = locking(_lookup(project, event["id"])).first()
    if row is None or row.outcome != FAILED:
        raise _Duplicate()
    # Only one concurrent retry may take over a failed event.
    if (
        not WebhookEvent.update(outcome=Outcome.RECEIVED, attempts=WebhookEvent.attempts + 1)
        .where(WebhookEvent.id == row.id, WebhookEvent.outcome == FAILED)
        .execute()
    ):
        raise _Duplicate()
    return row


def short_error(exc: BaseException) -> str:
    """A short, secret-free description of a failure (no SQL, no keys)."""
    if isinstance(exc, billing.StripeFailure):
        return (
            f"Stripe request failed (http {exc.http_status or '-'}, code {exc.code or '-'}, "
            f"request {exc.request_id or '-'})"[:200]
        )
    return f"{type(exc).__name__} while applying the event"


def _record_failure(project: Project | None, event: JSON, raw: str, remote_ip: str | None, exc: BaseException) -> None:
    error = short_error(exc)
    log.warning("webhook %s (%s) failed: %s", event["id"], event["type"], error)
    try:
        with block():
            with transaction():
                try:
                    with database.atomic():
                        WebhookEvent.create(
                            project=project, outcome=FAILED, error=error, remote_ip=remote_ip, **_row_fields(event, raw)
                        )
                        return
                except peewee.IntegrityError:
                    pass
                WebhookEvent.update(outcome=FAILED, error=error, attempts=WebhookEvent.attempts + 1).where(
                    WebhookEvent.id == locking(_lookup(project, event["id"])).first().id,
                    WebhookEvent.outcome != PROCESSED,
                    WebhookEvent.outcome != IGNORED,
                ).execute()
    except DatabaseUnavailable:
        raise
    except Exception as record_exc:  # still answer 500 (Stripe retries); never a crash page
        log.error("webhook %s: the failure could not be recorded (%s)", event["id"], type(record_exc).__name__)


async def process(
    project: Project | None,
    event: JSON,
    raw: bytes | str,
    *,
    config: Config,
    box: SecretBox,
    remote_ip: str | None = None,
) -> JSON:
    """Store and apply a verified event exactly once; returns the response body.

    Raises WebhookError(500) after recording a failure, so Stripe retries.
    """
    raw = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    remote_ip = (remote_ip or "")[:64] or None
    with block():
        prior = _lookup(project, event["id"]).first()
    if prior is not None and prior.outcome != FAILED:
        return {"received": True, "duplicate": True}
    try:
        fetched: JSON = {}  # nothing to read: without a project, or for a type not handled, nothing is applied
        if project is not None and event["type"] in events.HANDLED:
            fetched = await events.fetch(event, project, config=config, box=box)
    except Exception as exc:  # a Stripe outage: record, 500, Stripe retries later
        _record_failure(project, event, raw, remote_ip, exc)
        raise WebhookError(500, "webhook_failed", "The event could not be applied; it will be retried.") from None
    for _ in range(3):  # a deadlock between concurrent deliveries is retried, not failed
        with block():
            try:
                with transaction():
                    row = _claim(project, event, raw, remote_ip)
                    # One ownership rule for both endpoints and the console's re-apply (events.apply).
                    outcome, reason = (
                        events.apply(project, event, fetched) if project is not None else (IGNORED, UNROUTED)
                    )
                    WebhookEvent.update(
                        outcome=outcome, processed_at=utcnow(), error=None, reason=reason and reason[:255]
                    ).where(WebhookEvent.id == row.id).execute()
            except _Duplicate:
                return {"received": True, "duplicate": True}
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                if lock_timeout(exc):
                    # The loop already waited out the lock once: answer 503 now (Stripe retries)
                    # instead of waiting again to retry or to record the failure.
                    raise DatabaseUnavailable() from None
                failure = exc
            else:
                if reason:
                    log.info("webhook %s (%s) ignored: %s", event["id"], event["type"], reason)
                return {"received": True, "outcome": str(outcome)}
        if not retryable(failure):
            break
        log.info("webhook %s: transaction retried after %s", event["id"], type(failure).__name__)
    _record_failure(project, event, raw, remote_ip, failure)
    raise WebhookError(500, "webhook_failed", "The event could not be applied; it will be retried.")


_STORE_THREADS = 2
_store_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _store_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _store_executor
    if _store_executor is None:
        _store_executor = concurrent.futures.ThreadPoolExecutor(_STORE_THREADS, thread_name_prefix="inbox-store")
    return _store_executor


def enqueue(project: Project | None, event: JSON, raw: bytes | str, remote_ip: str | None = None) -> JSON:
    """Store a verified event for the inbox worker (PULSE_WEBHOOK_APPLY=worker); returns the response body.

    The answer is 200 once the row is committed: `{"received": true, "queued": true}`, or
    `"duplicate": true` when the event is already stored. Stripe retrying an event that failed
    makes it due again at once (the worker also retries it on its own, with backoff).
    """
    raw = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    remote_ip = (remote_ip or "")[:64] or None
    with block():
        try:
            with database.atomic():
                WebhookEvent.create(
                    project=project, outcome=Outcome.RECEIVED, remote_ip=remote_ip, **_row_fields(event, raw)
                )
        except peewee.IntegrityError:
            row = _lookup(project, event["id"]).first()
            if (
                row is not None
                and row.outcome == FAILED
                and WebhookEvent.update(retry_at=utcnow())
                .where(WebhookEvent.id == row.id, WebhookEvent.outcome == FAILED)
                .execute()
            ):
                return {"received": True, "queued": True}
            return {"received": True, "duplicate": True}
    return {"received": True, "queued": True}


async def receive(
    project: Project | None,
    raw: bytes,
    header: str | None,
    secret: str,
    *,
    config: Config,
    box: SecretBox,
    limiter: Limiter,
    remote_ip: str | None = None,
) -> JSON:
    """One delivery: verify, parse, route (project None = deployment-wide), process; returns the response body.

    Raises WebhookError 400 (invalid_signature, invalid_payload) or 500 (webhook_failed: recorded, Stripe
    retries). `limiter` (pulse.ratelimit.Limiter) caps how many invalid signatures are recorded.
    """
    reason = verify(raw, header, secret)
    if reason:
        await record_invalid(project, reason, remote_ip, limiter)
        raise WebhookError(400, "invalid_signature", f"Stripe signature check failed: {reason}.")
    event = parse(raw)
    if project is None:
        with block():
            project = events.route(event)
    if getattr(config, "webhook_apply", "inline") == "worker":
        # On a thread with its own connection: a lock wait or a slow commit then holds up this
        # delivery only, not every request on the loop (the thread waits outside the GIL).
        return await asyncio.get_running_loop().run_in_executor(_store_pool(), enqueue, project, event, raw, remote_ip)
    return await process(project, event, raw, config=config, box=box, remote_ip=remote_ip)


async def reapply(event_id: int, *, config: Config, box: SecretBox) -> str:
    """Re-apply a stored event (the console's "retry"); returns the resulting outcome.

    `event_id` is WebhookEvent.id. Raises LookupError for no such event or one without a payload,
    WebhookError(500) when it fails again (recorded as failed). Processed/ignored events are left
    alone and return their outcome.
    """
    with block():
        row = WebhookEvent.get_or_none(WebhookEvent.id == event_id)
        project = row.project if row is not None and row.project_id else None
    if row is None or not row.payload or not row.stripe_event_id:
        raise LookupError(event_id)
    if row.outcome != FAILED:
        return row.outcome
    event = parse(row.payload.encode("utf-8"))
    await process(project, event, row.payload, config=config, box=box, remote_ip=row.remote_ip)
    with block():
        return WebhookEvent.get_by_id(row.id).outcome
