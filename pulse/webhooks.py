"""Stripe webhooks: signature check, the idempotent inbox, routing, and applying events (SPEC 4)."""

import json
import logging
import time

import peewee
import stripe

from pulse import billing, projects, subscriptions as subs
from pulse.db import DatabaseUnavailable, block, utcnow
from pulse.models import Customer, Project, WebhookEvent

log = logging.getLogger("pulse.webhooks")

TOLERANCE = 300
INVALID_RECORDS_PER_MINUTE = 60
_invalid_counts = {}
PROCESSED, IGNORED, FAILED, INVALID_SIGNATURE = "processed", "ignored", "failed", "invalid_signature"
SUBSCRIPTION_EVENTS = {"customer.subscription.created", "customer.subscription.updated",
                       "customer.subscription.deleted", "customer.subscription.paused",
                       "customer.subscription.resumed"}
INVOICE_EVENTS = {"invoice.paid", "invoice.payment_failed"}
HANDLED = SUBSCRIPTION_EVENTS | INVOICE_EVENTS | {"checkout.session.completed", "customer.updated"}


class WebhookError(Exception):
    """A delivery answered with an error envelope (the handler turns it into ApiError)."""

    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Duplicate(Exception):
    pass


# ---------------------------------------------------------------- verifying and parsing


def verify(raw, header, secret):
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


def record_invalid(project, reason, remote_ip):
    """Keep a trace of a rejected delivery (no payload: it is unauthenticated input).

    Unsigned requests are not rate limited (Stripe's bursts must pass), so the trace is capped per
    client IP and minute (per process, no query): a flood of forgeries cannot fill the table.
    """
    minute, ip = int(time.time() // 60), (remote_ip or "")[:64]
    if _invalid_counts.get("minute") != minute:
        _invalid_counts.clear()
        _invalid_counts["minute"] = minute
    _invalid_counts[ip] = _invalid_counts.get(ip, 0) + 1
    if _invalid_counts[ip] > INVALID_RECORDS_PER_MINUTE:
        log.warning("invalid webhook signature from %s not recorded (over %s/minute): %s",
                    ip, INVALID_RECORDS_PER_MINUTE, reason)
        return
    with block():
        WebhookEvent.create(project=project, outcome=INVALID_SIGNATURE, error=reason[:200], remote_ip=ip or None,
                            processed_at=utcnow())


def parse(raw):
    """The event dict from a verified body, or WebhookError 400 `invalid_payload`."""
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise WebhookError(400, "invalid_payload", "Event body is not valid JSON.") from None
    if not isinstance(event, dict):
        raise WebhookError(400, "invalid_payload", "Event body must be a JSON object.")
    if not isinstance(event.get("id"), str) or not event["id"] or len(event["id"]) > 255:
        raise WebhookError(400, "invalid_payload", "Event has no id.")
    if not isinstance(event.get("type"), str) or not event["type"]:
        raise WebhookError(400, "invalid_payload", "Event has no type.")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise WebhookError(400, "invalid_payload", "Event has no data.object.")
    return event


# ---------------------------------------------------------------- reading events


def _obj(event):
    return event["data"]["object"]


def invoice_subscription_id(invoice):
    """An invoice's subscription: top-level before API 2025-03-31, under parent after."""
    sub = subs.stripe_id(invoice.get("subscription"))
    if sub:
        return sub
    details = (invoice.get("parent") or {}).get("subscription_details") or {}
    return subs.stripe_id(details.get("subscription"))


def subscription_id_of(event):
    """The subscription an event is about, or None."""
    obj, kind = _obj(event), event["type"]
    if kind in SUBSCRIPTION_EVENTS:
        return obj.get("id")
    if kind in INVOICE_EVENTS:
        return invoice_subscription_id(obj)
    if kind == "checkout.session.completed" and obj.get("mode", "subscription") == "subscription":
        return subs.stripe_id(obj.get("subscription"))
    return None


def _metadatas(obj):
    yield subs.metadata_of(obj)
    yield subs.metadata_of(obj.get("subscription_details"))
    yield subs.metadata_of((obj.get("parent") or {}).get("subscription_details"))
    if isinstance(obj.get("subscription"), dict):
        yield subs.metadata_of(obj["subscription"])


def route(event):
    """The project a deployment-wide event belongs to: pulse_project_id metadata, else customer id."""
    obj = _obj(event)
    for meta in _metadatas(obj):
        public_id = meta.get("pulse_project_id")
        if public_id:
            project = Project.get_or_none(Project.public_id == str(public_id))
            if project is not None:
                return project
    customer_id = obj.get("id") if obj.get("object") == "customer" else subs.stripe_id(obj.get("customer"))
    if customer_id:
        ids = {c.project_id for c in Customer.select(Customer.project).where(
            Customer.stripe_customer_id == customer_id).limit(2)}
        if len(ids) == 1:
            return Project.get_by_id(ids.pop())
    return None


# ---------------------------------------------------------------- Stripe reads (outside any DB block)


def stripe_key(project, config, box):
    """The project's Stripe secret key, else the deployment's, else None."""
    return projects.stripe_secret_key(project, box, config.stripe_secret_key)


def plain(obj):
    """A StripeObject as the plain JSON dict Stripe sent (what the upsert reads)."""
    response = getattr(obj, "last_response", None)
    return response.data if response is not None else json.loads(str(obj))


async def _read(client, event):
    found = {}
    sub_id = subscription_id_of(event)
    try:
        if sub_id:
            found["subscription"] = plain(await billing.call(client.v1.subscriptions.retrieve_async, sub_id))
        if event["type"] == "customer.updated" and _obj(event).get("id"):
            found["customer"] = plain(await billing.call(client.v1.customers.retrieve_async, _obj(event)["id"]))
    except billing.StripeFailure as exc:
        if exc.code != "resource_missing":
            raise
        # Stripe does not know it (deleted test data, another account): fall back to the payload.
        found.pop("subscription", None)
    return found


async def fetch(event, key, config):
    """Stripe's current objects for `event`: {"subscription", "customer" (when read), "at": ms}.

    "at" is taken before the request, so the fetched state is at least that new.
    """
    at = subs.clock_ms()
    found = await _read(billing.client_for(config, key), event) if key else {}
    found["at"] = at
    return found


# ---------------------------------------------------------------- applying (inside one transaction)


def _apply_subscription(project, event, fetched, email=None):
    if "subscription" in fetched:
        return subs.upsert_subscription(project, fetched["subscription"], fetched["at"], email=email)
    obj = _obj(event)
    snapshot = subs.event_snapshot(event.get("created"))
    if event["type"] in SUBSCRIPTION_EVENTS:
        return subs.upsert_subscription(project, obj, snapshot, email=email)
    if isinstance(obj.get("subscription"), dict):
        return subs.upsert_subscription(project, obj["subscription"], snapshot, email=email)
    if event["type"] == "invoice.payment_failed":
        return subs.UPDATED if subs.mark_past_due(project, subscription_id_of(event), snapshot) else subs.STALE
    return subs.UNMATCHED


def _apply_checkout(project, event, fetched):
    session = _obj(event)
    if session.get("mode", "subscription") != "subscription":
        return IGNORED
    meta = subs.metadata_of(session)
    external = session.get("client_reference_id") or meta.get("external_user_id")
    email = (session.get("customer_details") or {}).get("email") or session.get("customer_email")
    customer = subs.resolve_customer(project, subs.stripe_id(session.get("customer")), external, email=email)
    if customer is None:
        return IGNORED
    if subscription_id_of(event):
        _apply_subscription(project, event, fetched, email=email)
    return PROCESSED


def _apply_customer(project, event, fetched):
    obj = fetched.get("customer") or _obj(event)
    if obj.get("deleted") or not obj.get("id"):
        return IGNORED
    email = (obj.get("email") or "")[:254]
    customer = Customer.get_or_none(Customer.project == project, Customer.stripe_customer_id == obj["id"])
    if customer is None:
        return IGNORED
    if email and customer.email != email:
        Customer.update(email=email, updated_at=utcnow()).where(Customer.id == customer.id).execute()
    return PROCESSED


def apply(project, event, fetched):
    """Apply `event` to local state; returns PROCESSED or IGNORED. Never awaits."""
    kind = event["type"]
    if kind == "checkout.session.completed":
        return _apply_checkout(project, event, fetched)
    if kind in SUBSCRIPTION_EVENTS or kind in INVOICE_EVENTS:
        if not subscription_id_of(event):
            return IGNORED
        return IGNORED if _apply_subscription(project, event, fetched) == subs.UNMATCHED else PROCESSED
    if kind == "customer.updated":
        return _apply_customer(project, event, fetched)
    return IGNORED


# ---------------------------------------------------------------- the inbox


def _lookup(project, event_id):
    query = WebhookEvent.select().where(WebhookEvent.stripe_event_id == event_id)
    query = query.where(WebhookEvent.project.is_null()) if project is None else query.where(
        WebhookEvent.project == project)
    return query


def _row_fields(event, raw):
    obj = _obj(event)
    customer = obj.get("id") if obj.get("object") == "customer" else subs.stripe_id(obj.get("customer"))
    return dict(stripe_event_id=event["id"], type=event["type"][:100],
                api_version=(event.get("api_version") or None) and str(event["api_version"])[:40],
                livemode=bool(event.get("livemode")), object_id=(obj.get("id") or None) and str(obj["id"])[:255],
                stripe_customer_id=customer and str(customer)[:255], stripe_created=event.get("created")
                if isinstance(event.get("created"), int) else None, payload=raw)


def _claim(project, event, raw, remote_ip):
    """Insert the inbox row, or take over a failed one; raises _Duplicate when already handled."""
    try:
        with subs.database.atomic():
            return WebhookEvent.create(project=project, outcome="received", remote_ip=remote_ip,
                                       **_row_fields(event, raw))
    except peewee.IntegrityError:
        pass
    row = subs._locking(_lookup(project, event["id"])).first()
    if row is None or row.outcome != FAILED:
        raise _Duplicate()
    # Only one concurrent retry may take over a failed event.
    if not WebhookEvent.update(outcome="received", attempts=WebhookEvent.attempts + 1).where(
            WebhookEvent.id == row.id, WebhookEvent.outcome == FAILED).execute():
        raise _Duplicate()
    return row


def short_error(exc):
    """A short, secret-free description of a failure (no SQL, no keys)."""
    if isinstance(exc, billing.StripeFailure):
        return f"Stripe request failed (http {exc.http_status or '-'}, code {exc.code or '-'}, " \
               f"request {exc.request_id or '-'})"[:200]
    return f"{type(exc).__name__} while applying the event"


def _record_failure(project, event, raw, remote_ip, exc):
    error = short_error(exc)
    log.warning("webhook %s (%s) failed: %s", event["id"], event["type"], error)
    with block():
        with subs.transaction():
            try:
                with subs.database.atomic():
                    WebhookEvent.create(project=project, outcome=FAILED, error=error, remote_ip=remote_ip,
                                        **_row_fields(event, raw))
                    return
            except peewee.IntegrityError:
                pass
            WebhookEvent.update(outcome=FAILED, error=error, attempts=WebhookEvent.attempts + 1).where(
                WebhookEvent.id == subs._locking(_lookup(project, event["id"])).first().id,
                WebhookEvent.outcome != PROCESSED, WebhookEvent.outcome != IGNORED).execute()


async def process(project, event, raw, *, config, box, remote_ip=None):
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
        fetched = {"at": subs.clock_ms()}
        if project is not None and event["type"] in HANDLED:
            fetched = await fetch(event, stripe_key(project, config, box), config)
    except Exception as exc:  # a Stripe outage: record, 500, Stripe retries later
        _record_failure(project, event, raw, remote_ip, exc)
        raise WebhookError(500, "webhook_failed", "The event could not be applied; it will be retried.") from None
    for _ in range(3):  # a deadlock between concurrent deliveries is retried, not failed
        with block():
            try:
                with subs.transaction():
                    row = _claim(project, event, raw, remote_ip)
                    outcome = apply(project, event, fetched) if project is not None else IGNORED
                    WebhookEvent.update(outcome=outcome, processed_at=utcnow(), error=None).where(
                        WebhookEvent.id == row.id).execute()
            except _Duplicate:
                return {"received": True, "duplicate": True}
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                failure = exc
            else:
                return {"received": True, "outcome": outcome}
        if not subs.retryable(failure):
            break
        log.info("webhook %s: transaction retried after %s", event["id"], type(failure).__name__)
    _record_failure(project, event, raw, remote_ip, failure)
    raise WebhookError(500, "webhook_failed", "The event could not be applied; it will be retried.")


async def receive(project, raw, header, secret, *, config, box, remote_ip=None):
    """One delivery: verify, parse, route (project None = deployment-wide), process."""
    reason = verify(raw, header, secret)
    if reason:
        record_invalid(project, reason, remote_ip)
        raise WebhookError(400, "invalid_signature", f"Stripe signature check failed: {reason}.")
    event = parse(raw)
    if project is None:
        with block():
            project = route(event)
    return await process(project, event, raw, config=config, box=box, remote_ip=remote_ip)


async def reapply(event_id, *, config, box):
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
