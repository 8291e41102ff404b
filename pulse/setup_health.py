"""A project's setup health: what is missing or failing, for the dashboard (SPEC 5, issue 13.5)."""

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from pulse.db import utcnow
from pulse.models import AuditLog, Project, WebhookEvent
from pulse.outcomes import Outcome

RECENT = timedelta(days=7)
INVALID_SIGNATURE, FAILED = Outcome.INVALID_SIGNATURE, Outcome.FAILED


@dataclass(frozen=True)
class Problem:
    """One setup problem: a stable `code`, how many rows show it, and the latest time it was seen (or None)."""

    code: str
    count: int = 1
    at: datetime | None = None


def problems(
    project: Project,
    *,
    default_secret_key: bool = False,
    default_webhook_secret: bool = False,
    now: datetime | None = None,
) -> list[Problem]:
    """[Problem] for `project`, worst first; [] when set-up looks right. Call inside a db block.

    Codes: `stripe_key_missing` (no project key and no deployment-wide key: checkouts answer 503),
    `webhook_secret_missing` (its endpoint answers 503), `invalid_signatures` (deliveries with a bad
    signature since the last good one, within 7 days: the likeliest cause is a wrong signing secret),
    `no_webhook_yet` (no signed delivery ever arrived), `failed_events` (events still failed, within
    7 days), `connection_check_failed` (the last "Check connection" since the key last changed failed).
    """
    now = now or utcnow()
    since = now - RECENT
    found = []
    if not project.stripe_secret_key and not default_secret_key:
        found.append(Problem("stripe_key_missing"))
    if not project.stripe_webhook_secret and not default_webhook_secret:
        found.append(Problem("webhook_secret_missing"))
    events = WebhookEvent.select().where(WebhookEvent.project == project)
    last_good = events.where(WebhookEvent.outcome != INVALID_SIGNATURE).order_by(WebhookEvent.id.desc()).first()
    bad = events.where(WebhookEvent.outcome == INVALID_SIGNATURE, WebhookEvent.received_at >= since)
    if last_good is not None:
        bad = bad.where(WebhookEvent.id > last_good.id)
    latest_bad = bad.order_by(WebhookEvent.id.desc()).first()
    if latest_bad is not None:
        found.append(Problem("invalid_signatures", bad.count(), latest_bad.received_at))
    if last_good is None:
        found.append(Problem("no_webhook_yet"))
    failed = events.where(WebhookEvent.outcome == FAILED, WebhookEvent.received_at >= since)
    latest_failed = failed.order_by(WebhookEvent.id.desc()).first()
    if latest_failed is not None:
        found.append(Problem("failed_events", failed.count(), latest_failed.received_at))
    check = _last_connection_check(project)
    if check is not None and not check[0]:
        found.append(Problem("connection_check_failed", 1, check[1]))
    return found


def _last_connection_check(project: Project) -> tuple[bool, datetime] | None:
    """(ok, when) of the last connection check, or None when none ran since the secret key last changed."""
    log = AuditLog.select().where(AuditLog.project == project)
    row = log.where(AuditLog.action == "settings.connection_checked").order_by(AuditLog.id.desc()).first()
    if row is None:
        return None
    for later in log.where(AuditLog.action == "settings.stripe_updated", AuditLog.id > row.id):
        if "stripe_secret_key" in (later.detail or ""):
            return None  # checked an older key
    try:
        ok = json.loads(row.detail or "{}").get("ok")
    except (ValueError, AttributeError):
        return None
    return bool(ok), row.created_at
