"""Console read queries: keyset pages newest first walk every row once, Older and back Newer."""

from pulse import db, insights
from pulse.models import AuditLog, Customer, WebhookEvent


def walk(fetch):
    """Every page from the newest by Older, then back by Newer: ([ids going older], [pages coming back])."""
    pages, page = [], fetch(before=0, after=0)
    while True:
        pages.append([row.id for row in page.rows])
        if page.older is None:
            break
        page = fetch(before=page.older, after=0)
    back = [pages[-1]]
    while page.newer is not None:
        page = fetch(before=0, after=page.newer)
        back.append([row.id for row in page.rows])
    return pages, back


def test_events_audit_and_customers_page_newest_first_both_ways(app, project):
    with db.block():
        for i in range(7):
            WebhookEvent.create(
                project=project.project, stripe_event_id=f"evt_{i}", type="invoice.paid", outcome="processed"
            )
            AuditLog.create(project=project.project, actor="cli", action=f"test.{i}")
            Customer.create(project=project.project, external_user_id=f"c{i}")
        events, events_back = walk(lambda **c: insights.list_events(project.project, limit=3, **c))
        audit, _ = walk(lambda **c: insights.audit_entries(project.project, limit=3, **c))
        customers, customers_back = walk(lambda **c: insights.search_customers(project.project, limit=3, **c)[0])
        exact = insights.list_events(project.project, limit=7)
        total = insights.search_customers(project.project, q="c")[1]
    flat = [i for page in events for i in page]
    assert [len(p) for p in events] == [3, 3, 1] and flat == sorted(flat, reverse=True) and len(set(flat)) == 7
    assert events_back == events[::-1]  # Newer walks back over the very same pages
    assert customers_back == customers[::-1] and [len(p) for p in customers] == [3, 3, 1]
    flat = [i for page in audit for i in page]
    assert flat == sorted(flat, reverse=True) and len(set(flat)) == len(flat) >= 7
    assert exact.older is None and exact.newer is None  # exactly one page: no link to an empty one
    assert total == 7
