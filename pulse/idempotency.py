"""Idempotency-Key (SPEC 3.1): remember a POST's outcome per project and key for 24 hours."""

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee

from pulse.db import database, utcnow
from pulse.models import IdempotencyRecord, Project

log = logging.getLogger("pulse.idempotency")

TTL = timedelta(hours=24)
# A record still in flight after this long belongs to a request whose process died: take it over.
STALE_IN_FLIGHT = timedelta(minutes=2)
# Printable ASCII, no surrounding spaces (HTTP strips them anyway); also the pattern in the OpenAPI document.
KEY_PATTERN = r"[\x21-\x7e]([\x20-\x7e]{0,253}[\x21-\x7e])?"
_KEY = re.compile(KEY_PATTERN)
_PURGE_EVERY = 600.0
_next_purge = 0.0


@dataclass(frozen=True)
class Outcome:
    """What to do with a keyed request: run it (`record_id`), replay, or refuse (`conflict`)."""

    action: str  # "run" | "replay" | "conflict"
    record_id: int | None = None
    status_code: int | None = None
    body: str | None = None
    reason: str | None = None  # "in_flight" | "mismatch" (other body) | "other_endpoint" for conflicts


def valid_key(key: str) -> bool:
    """Keys are 1-255 printable ASCII characters (a UUID is the usual choice)."""
    return bool(_KEY.fullmatch(key))


def _once(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # A body that repeats a key is refused by the API: it must not share a fingerprint with its last-wins twin.
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate key")
    return data


def request_hash(method: str, path: str, body: bytes) -> str:
    """A fingerprint of what the request asks for; JSON bodies compare by value, not key order.

    64 hex characters (the column's size): 16 of the endpoint alone, so a conflict can say whether
    the endpoint or the body differs, then 48 of endpoint and body together.
    """
    try:
        value = json.loads(body, object_pairs_hook=_once)
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError, RecursionError):  # not JSON (or repeats a key), or nested too deep
        canonical = body
    endpoint = f"{method} {path}\n".encode()
    return hashlib.sha256(endpoint).hexdigest()[:16] + hashlib.sha256(endpoint + canonical).hexdigest()[:48]


def _same_request(stored: str, fingerprint: str) -> bool:
    # Records written before the endpoint prefix hold the whole sha256 of endpoint and body (gone after 24 h).
    return stored == fingerprint or stored[:48] == fingerprint[16:]


def _conflict_reason(stored: str, fingerprint: str) -> str:
    return "mismatch" if stored[:16] == fingerprint[:16] else "other_endpoint"


def begin(project: Project, key: str, fingerprint: str, now: datetime | None = None) -> Outcome:
    """Claim `key` for a new request, or say why not. Call inside `with block():`."""
    now = now or utcnow()
    _maybe_purge(now)
    for _ in range(3):
        try:
            with database.atomic():
                record = IdempotencyRecord.create(project=project, key=key, request_hash=fingerprint, created_at=now)
            return Outcome("run", record_id=record.id)
        except peewee.IntegrityError:
            pass
        existing = IdempotencyRecord.get_or_none(
            (IdempotencyRecord.project == project) & (IdempotencyRecord.key == key)
        )
        if existing is None:
            continue  # released (a 5xx) between our insert and this read: try again
        expired = existing.created_at <= now - TTL
        stale = existing.status_code is None and existing.created_at <= now - STALE_IN_FLIGHT
        same = _same_request(existing.request_hash, fingerprint)
        if expired or (stale and same):
            # Compare-and-set on created_at, so only one of several retries takes the key over.
            taken = (
                IdempotencyRecord.update(request_hash=fingerprint, status_code=None, response_body=None, created_at=now)
                .where((IdempotencyRecord.id == existing.id) & (IdempotencyRecord.created_at == existing.created_at))
                .execute()
            )
            if taken:
                return Outcome("run", record_id=existing.id)
            continue
        if not same:
            return Outcome("conflict", reason=_conflict_reason(existing.request_hash, fingerprint))
        if existing.status_code is None:
            return Outcome("conflict", reason="in_flight")
        return Outcome("replay", status_code=existing.status_code, body=existing.response_body)
    return Outcome("conflict", reason="in_flight")


def complete(record_id: int, status_code: int, body: str) -> None:
    """Store the response of the request that claimed the record (call inside `with block():`)."""
    (
        IdempotencyRecord.update(status_code=status_code, response_body=body)
        .where(IdempotencyRecord.id == record_id)
        .execute()
    )


def release(record_id: int) -> None:
    """Forget a claim whose request failed on our side (5xx), so a retry runs again."""
    IdempotencyRecord.delete().where(IdempotencyRecord.id == record_id).execute()


def purge(now: datetime | None = None) -> int:
    """Delete records older than 24 h; returns how many went."""
    cutoff = (now or utcnow()) - TTL
    return IdempotencyRecord.delete().where(IdempotencyRecord.created_at <= cutoff).execute()


def _maybe_purge(now: datetime) -> None:
    # At most every ten minutes per process: the index on created_at makes it cheap.
    global _next_purge
    if time.monotonic() < _next_purge:
        return
    _next_purge = time.monotonic() + _PURGE_EVERY
    try:
        removed = purge(now)
    except peewee.DatabaseError:
        log.warning("could not purge expired idempotency records")
        return
    if removed:
        log.info("purged %s expired idempotency records", removed)
