"""Console read queries: keyset pages newest first (events, audit log) walk every row once."""

from pulse import db, insights
from pulse.models import AuditLog, WebhookEvent


def walk(fetch):
    seen, cursor = [], 0
    while True:
        rows, cursor = fetch(cursor)
        seen.extend(row.id for row in rows)
        if cursor is None:
            return seen


def test_events_and_audit_pages_newest_first(app, project):
    with db.block():
        for i in range(7):
            WebhookEvent.create(project=project.project, stripe_event_id=f"evt_{i}", type="invoice.paid",
                                outcome="processed")
            AuditLog.create(project=project.project, actor="cli", action=f"test.{i}")
        events = walk(lambda c: insights.list_events(project.project, before=c, limit=3))
        audit = walk(lambda c: insights.audit_entries(project.project, before=c, limit=3))
        exact = insights.list_events(project.project, limit=7)
    assert len(events) == 7 and events == sorted(events, reverse=True)
    assert audit == sorted(audit, reverse=True) and len(audit) == len(set(audit)) >= 7
    assert exact[1] is None  # exactly one page: no cursor to a page that would be empty
