"""Project API keys: issue, authenticate (with a short in-process cache), rotate, revoke."""

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from pulse import security
from pulse.db import database, utcnow
from pulse.models import ApiKey, Project

# last_used_at is written at most this often per key, so the hot path does not write on every request.
LAST_USED_RESOLUTION = 60.0
_last_used_written: dict[int, float] = {}
_lock = threading.Lock()

# A successful lookup is reused for at most this long. Revocation in this process clears the
# cache at once; another process sees it within CACHE_TTL (SPEC promises 2 s). Failures are
# never cached, so a new key works at once everywhere. Any write through this process's
# database handle also retires entries (their project row may have changed: settings, keys).
CACHE_TTL = 1.0
CACHE_MAX = 10000
_cache: dict[tuple[int, str], tuple[float, ApiKey, int]] = {}


@dataclass(frozen=True)
class IssuedKey:
    """A key as shown once to its creator."""

    api_key: str
    key_id: str
    prefix: str
    record: ApiKey


def issue(project: Project, label: str = "", expires_at: datetime | None = None) -> IssuedKey:
    """Create a key for `project` (inside the caller's db block) and return it once in full."""
    raw, prefix, digest = security.new_api_key(security.TEST_KEY_PREFIX if project.sandbox else security.API_KEY_PREFIX)
    record = ApiKey.create(
        public_id=security.public_id("key"),
        project=project,
        label=label[:100],
        prefix=prefix,
        key_hash=digest,
        expires_at=expires_at,
    )
    return IssuedKey(api_key=raw, key_id=record.public_id, prefix=prefix, record=record)


def authenticate(raw: str | None) -> tuple[ApiKey, Project] | None:
    """The (ApiKey, Project) for a live key, else None. Call inside a db block."""
    if raw is None or not security.looks_like_api_key(raw):
        return None
    digest = security.hash_token(raw)
    # Keyed by the bound database too: tests (and tools) rebind the proxy between databases.
    slot = (id(database.obj), digest)
    hit = _cache.get(slot)
    mono = time.monotonic()
    if hit is not None and hit[0] > mono and hit[2] == database.obj.write_generation():
        row = hit[1]
        now = utcnow()
        # Scheduled revocation (rotation grace) and expiry are checked on every hit.
        if (row.revoked_at is None or row.revoked_at > now) and (row.expires_at is None or row.expires_at > now):
            return row, row.project
        _cache.pop(slot, None)
        return None
    found = _lookup(digest)
    if found is not None:
        if len(_cache) >= CACHE_MAX:
            _cache.clear()
        _cache[slot] = (mono + CACHE_TTL, found[0], database.obj.write_generation())
    return found


def invalidate(project_id: int | None = None) -> None:
    """Forget cached keys (of one project, or all): call after revoking or changing a project."""
    if project_id is None:
        _cache.clear()
        return
    for slot, (_, row, _) in list(_cache.items()):
        if row.project_id == project_id:
            _cache.pop(slot, None)


def _lookup(digest: str) -> tuple[ApiKey, Project] | None:
    row = ApiKey.select(ApiKey, Project).join(Project).where(ApiKey.key_hash == digest).first()
    if row is None or not security.same_hash(row.key_hash, digest):
        return None
    now = utcnow()
    if row.revoked_at is not None and row.revoked_at <= now:
        return None
    if row.expires_at is not None and row.expires_at <= now:
        return None
    _touch(row, now)
    return row, row.project


def _touch(row: ApiKey, now: datetime) -> None:
    mono = time.monotonic()
    with _lock:
        last = _last_used_written.get(row.id)
        if last is not None and mono - last < LAST_USED_RESOLUTION:
            return
        _last_used_written[row.id] = mono
    ApiKey.update(last_used_at=now).where(ApiKey.id == row.id).execute()


def revoke(key: ApiKey, grace_seconds: float = 0) -> datetime:
    """Stop `key` working now, or after a grace period (rotation)."""
    when = utcnow() + timedelta(seconds=grace_seconds)
    if key.revoked_at is None or key.revoked_at > when:
        key.revoked_at = when
        ApiKey.update(revoked_at=when).where(ApiKey.id == key.id).execute()
    invalidate(key.project_id)
    return when


def rotate(key: ApiKey, grace_seconds: float) -> IssuedKey:
    """Issue a replacement for `key` with the same label; the old one ends after the grace."""
    issued = issue(key.project, label=key.label)
    revoke(key, grace_seconds)
    return issued


def status(key: ApiKey, now: datetime | None = None) -> str:
    """`active`, `expiring` (revocation scheduled), `revoked` or `expired`."""
    now = now or utcnow()
    if key.revoked_at is not None:
        return "revoked" if key.revoked_at <= now else "expiring"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


def keys_of(project: Project) -> list[ApiKey]:
    """The project's keys, newest first, each with `.state` (see `status`). Call inside a db block."""
    rows = list(ApiKey.select().where(ApiKey.project == project).order_by(ApiKey.id.desc()))
    now = utcnow()
    for row in rows:
        row.state = status(row, now)
    return rows


def key_of(project: Project, key_id: str) -> ApiKey | None:
    """The project's key with public id `key_id` (`key_…`), or None. Call inside a db block."""
    key = ApiKey.get_or_none(ApiKey.public_id == key_id, ApiKey.project == project)
    if key is not None:
        key.project = project  # callers audit and rotate with the project row they already hold
    return key
