"""Read-only queries behind the console: dashboard figures, customer search, event and audit lists."""

from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

import peewee as pw

from pulse import status as rules
from pulse.db import utcnow
from pulse.models import AuditLog, Customer, Membership, Project, Subscription, WebhookEvent
from pulse.outcomes import Outcome
from pulse.status import ALL_STATUSES

PAGE_SIZE = 50
WEEKS = 12
OUTCOMES = tuple(Outcome)


def status_counts(project: Project) -> dict[str, int]:
    """{status: count} over the project's subscriptions, every status present (0 when none)."""
    counts: dict[str, int] = dict.fromkeys(ALL_STATUSES, 0)
    rows = (
        Subscription.select(Subscription.status, pw.fn.COUNT(Subscription.id))
        .where(Subscription.project == project)
        .group_by(Subscription.status)
        .tuples()
    )
    for status, count in rows:
        counts[status] = counts.get(status, 0) + count
    return counts


def weekly_starts(project: Project, now: datetime | None = None, weeks: int = WEEKS) -> list[tuple[date, int]]:
    """[(week start date, count)] of subscriptions started per week, oldest first, the last week ending now."""
    now = now or utcnow()
    today = now.date()
    first = today - timedelta(days=today.weekday()) - timedelta(weeks=weeks - 1)
    buckets: list[list[Any]] = [[first + timedelta(weeks=i), 0] for i in range(weeks)]
    started = pw.fn.COALESCE(Subscription.started_at, Subscription.created_at)
    rows = Subscription.select(started.alias("at")).where(Subscription.project == project, started >= first).tuples()
    for (at,) in rows:
        if isinstance(at, str):  # SQLite hands COALESCE back as text
            at = pw.format_date_time(at, pw.DateTimeField.formats)
        index = (at.date() - first).days // 7
        if 0 <= index < weeks:
            buckets[index][1] += 1
    return [(start, count) for start, count in buckets]


def last_webhook(project: Project) -> WebhookEvent | None:
    """The project's latest webhook event (any outcome), or None."""
    return WebhookEvent.select().where(WebhookEvent.project == project).order_by(WebhookEvent.id.desc()).first()


class Page(NamedTuple):
    """One keyset page, newest first: `older` / `newer` are the cursors of the pages beside it (None at an end)."""

    rows: list
    older: int | None
    newer: int | None


def keyset_page(
    query: pw.ModelSelect, id_field: pw.Field, before: int = 0, after: int = 0, limit: int = PAGE_SIZE
) -> Page:
    """The page of `query` just older than id `before`, just newer than id `after`, or the newest page.

    Rows come newest first (by `id_field`, which only grows). One extra row tells whether more follow in
    the direction of travel; one EXISTS query answers the other direction.
    """
    if after:
        rows = list(query.where(id_field > after).order_by(id_field).limit(limit + 1))
        more_newer = len(rows) > limit
        rows = rows[:limit][::-1]
        more_older = bool(rows) and query.where(id_field < rows[-1].id).exists()
    else:
        page = query.where(id_field < before) if before else query
        rows = list(page.order_by(id_field.desc()).limit(limit + 1))
        more_older = len(rows) > limit
        rows = rows[:limit]
        more_newer = bool(before) and bool(rows) and query.where(id_field > rows[0].id).exists()
    return Page(rows, rows[-1].id if more_older else None, rows[0].id if more_newer else None)


def recent_failures(project: Project, limit: int = 5) -> list[WebhookEvent]:
    """The latest failed and bad-signature deliveries, newest first."""
    return list(
        WebhookEvent.select()
        .where(WebhookEvent.project == project, WebhookEvent.outcome.in_((Outcome.FAILED, Outcome.INVALID_SIGNATURE)))
        .order_by(WebhookEvent.id.desc())
        .limit(limit)
    )


def search_customers(
    project: Project, q: str = "", status: str = "", before: int = 0, after: int = 0, limit: int = PAGE_SIZE
) -> tuple[Page, int]:
    """(Page of customers newest first, each with .subscription; total matching): prefix search, status filter."""
    query = Customer.select().where(Customer.project == project)
    q = (q or "").strip()
    if q:
        # Emails are stored lower-case; external ids are exact (binary on MySQL), so their prefix is a
        # case-sensitive range on both databases, which the (project, external_user_id) index serves.
        by_id = (Customer.external_user_id >= q) & (Customer.external_user_id < q + "\U0010ffff")
        query = query.where(Customer.email.startswith(q.lower()) | by_id)
    if status:
        query = query.where(
            pw.fn.EXISTS(
                Subscription.select(Subscription.id).where(
                    Subscription.customer == Customer.id, Subscription.status == status
                )
            )
        )
    page = keyset_page(query, Customer.id, before=before, after=after, limit=limit)
    rows = page.rows
    by_customer: dict[int, list[Subscription]] = {}
    if rows:
        for sub in Subscription.select().where(Subscription.customer.in_([c.id for c in rows])):
            by_customer.setdefault(sub.customer_id, []).append(sub)
    policy = rules.policy_of(project)
    for customer in rows:
        customer.subscription = rules.current(by_customer.get(customer.id, []), policy)
    return page, query.count()


def several_with_access(project: Project, limit: int = 20) -> tuple[list[Customer], int]:
    """(customers with more than one subscription with access, how many in all): a race or a Dashboard duplicate."""
    counted = (
        Subscription.select(Subscription.customer, pw.fn.COUNT(Subscription.id).alias("n"))
        .join(Project, on=(Project.id == Subscription.project))
        .where((Subscription.project == project.id) & rules.access_condition(Subscription, Project))
        .group_by(Subscription.customer)
        .having(pw.fn.COUNT(Subscription.id) > 1)
    )
    counts = dict(counted.tuples())
    if not counts:
        return [], 0
    customers = list(Customer.select().where(Customer.id.in_(sorted(counts)[:limit])).order_by(Customer.id))
    for customer in customers:
        customer.with_access = counts[customer.id]
    return customers, len(counts)


def customer_by_external_id(project: Project, external_user_id: str) -> Customer | None:
    """The project's customer with this tenant user id (exact match), or None."""
    return Customer.get_or_none(Customer.project == project, Customer.external_user_id == external_user_id)


def subscriptions_of(customer: Customer) -> list[Subscription]:
    """Every subscription of `customer`, any status, newest first."""
    return list(Subscription.select().where(Subscription.customer == customer).order_by(Subscription.id.desc()))


def events_of_customer(
    project: Project, customer: Customer, subscriptions: list[Subscription], limit: int = 50
) -> list[WebhookEvent]:
    """Webhook events that touched this customer: by Stripe customer id or by object id."""
    ids = [s.stripe_subscription_id for s in subscriptions]
    cond = None
    # Its current Stripe customer and the ones Stripe deleted (their customer.deleted events).
    stripe_ids = [row.stripe_customer_id for row in customer.stripe_history] + [customer.stripe_customer_id]
    stripe_ids = [cid for cid in stripe_ids if cid]
    if stripe_ids:
        cond = WebhookEvent.stripe_customer_id.in_(stripe_ids) | WebhookEvent.object_id.in_(stripe_ids)
    if ids:
        by_object = WebhookEvent.object_id.in_(ids)
        cond = by_object if cond is None else (cond | by_object)
    if cond is None:
        return []
    return list(
        WebhookEvent.select().where(WebhookEvent.project == project, cond).order_by(WebhookEvent.id.desc()).limit(limit)
    )


def customer_of_event(project: Project, event: WebhookEvent) -> Customer | None:
    """The local customer an event is about (by Stripe customer id), or None."""
    if not event.stripe_customer_id:
        return None
    return Customer.get_or_none(Customer.project == project, Customer.stripe_customer_id == event.stripe_customer_id)


def list_events(
    project: Project, type_: str = "", outcome: str = "", before: int = 0, after: int = 0, limit: int = PAGE_SIZE
) -> Page:
    """A Page of events newest first, filtered by exact type and outcome."""
    query = WebhookEvent.select().where(WebhookEvent.project == project)
    if type_:
        query = query.where(WebhookEvent.type == type_)
    if outcome:
        query = query.where(WebhookEvent.outcome == outcome)
    return keyset_page(query, WebhookEvent.id, before=before, after=after, limit=limit)


def event_types(project: Project) -> list[str]:
    """The distinct event types the project has received, sorted."""
    rows = (
        WebhookEvent.select(WebhookEvent.type)
        .where(WebhookEvent.project == project)
        .distinct()
        .order_by(WebhookEvent.type)
        .tuples()
    )
    return [t for (t,) in rows if t]


def get_event(project: Project, event_id: int | str) -> WebhookEvent | None:
    """The project's webhook event with id `event_id`, or None (also for an id that is not a number)."""
    try:
        event_id = int(event_id)
    except (TypeError, ValueError):
        return None
    return WebhookEvent.get_or_none(WebhookEvent.id == event_id, WebhookEvent.project == project)


def audit_entries(project: Project, before: int = 0, after: int = 0, limit: int = 100) -> Page:
    """A Page of entries newest first: the project's log plus its members' sign-ins."""
    members = Membership.select(Membership.user).where(Membership.project == project)
    query = AuditLog.select().where(
        (AuditLog.project == project) | (AuditLog.project.is_null() & AuditLog.user.in_(members))
    )
    return keyset_page(query, AuditLog.id, before=before, after=after, limit=limit)
