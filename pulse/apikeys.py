"""Project API keys: issue, authenticate, rotate, revoke."""

import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from pulse import security
from pulse.db import utcnow
from pulse.models import ApiKey, Project

# last_used_at is written at most this often per key, so the hot path does not write on every request.
LAST_USED_RESOLUTION = 60.0
_last_used_written = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class IssuedKey:
    """A key as shown once to its creator."""

    api_key: str
    key_id: str
    prefix: str
    record: ApiKey


def issue(project, label="", expires_at=None):
    """Create a key for `project` (inside the caller's db block) and return it once in full."""
    raw, prefix, digest = security.new_api_key()
    record = ApiKey.create(public_id=security.public_id("key"), project=project, label=label[:100],
                           prefix=prefix, key_hash=digest, expires_at=expires_at)
    return IssuedKey(api_key=raw, key_id=record.public_id, prefix=prefix, record=record)


def authenticate(raw):
    """The (ApiKey, Project) for a live key, else None. Call inside a db block."""
    if not security.looks_like_api_key(raw or ""):
        return None
    digest = security.hash_token(raw)
    row = (ApiKey.select(ApiKey, Project).join(Project)
           .where(ApiKey.key_hash == digest).first())
    if row is None or not security.same_hash(row.key_hash, digest):
        return None
    now = utcnow()
    if row.revoked_at is not None and row.revoked_at <= now:
        return None
    if row.expires_at is not None and row.expires_at <= now:
        return None
    _touch(row, now)
    return row, row.project


def _touch(row, now):
    mono = time.monotonic()
    with _lock:
        last = _last_used_written.get(row.id)
        if last is not None and mono - last < LAST_USED_RESOLUTION:
            return
        _last_used_written[row.id] = mono
    ApiKey.update(last_used_at=now).where(ApiKey.id == row.id).execute()


def revoke(key, grace_seconds=0):
    """Stop `key` working now, or after a grace period (rotation)."""
    when = utcnow() + timedelta(seconds=grace_seconds)
    if key.revoked_at is None or key.revoked_at > when:
        key.revoked_at = when
        ApiKey.update(revoked_at=when).where(ApiKey.id == key.id).execute()
    return when


def rotate(key, grace_seconds):
    """Issue a replacement for `key` with the same label; the old one ends after the grace."""
    issued = issue(key.project, label=key.label)
    revoke(key, grace_seconds)
    return issued


def status(key, now=None):
    """`active`, `expiring` (revocation scheduled), `revoked` or `expired`."""
    now = now or utcnow()
    if key.revoked_at is not None:
        return "revoked" if key.revoked_at <= now else "expiring"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"
