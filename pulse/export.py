"""Customer export (SPEC 3.2): keyset pages of customers with their current subscription, as CSV or JSON.

Used by GET /api/customers/export and the console. Callers stream it:

    for chunk in export.chunks(project, "csv"):
        handler.write(chunk)
        await handler.flush()

Each page is read in its own short `with block():`, released before the chunk is yielded, so a
consumer may await between chunks and memory stays at one page whatever the table's size.
"""

import csv
import io
import json

from pulse.db import block, isoformat, utcnow
from pulse.models import Customer, Project, Subscription
from pulse.status import has_access

PAGE_SIZE = 500
FORMATS = {"json": "application/json; charset=UTF-8", "csv": "text/csv; charset=UTF-8"}
CSV_COLUMNS = ("external_user_id", "email", "stripe_customer_id", "created_at", "status", "has_access",
               "plan_slug", "interval", "stripe_price_id", "current_period_end", "cancel_at", "trial_end")
SUBSCRIPTION_FIELDS = ("status", "has_access", "plan_slug", "interval", "stripe_price_id", "current_period_end",
                       "cancel_at", "trial_end", "stripe_subscription_id")
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def filename(project, fmt, today=None):
    """customers-<project public id>-<YYYY-MM-DD>.<fmt>"""
    return f"customers-{project.public_id}-{(today or utcnow().date()).isoformat()}.{fmt}"


def _current(subs, past_due_has_access):
    # Same rule as GET /api/subscription: access first, then the most recently started, then newest row.
    def rank(sub):
        return (not has_access(sub["status"], past_due_has_access),
                sub["started_at"] is None, -(sub["started_at"].timestamp() if sub["started_at"] else 0), -sub["id"])
    return min(subs, key=rank) if subs else None


def page(project_id, after_id=0, size=PAGE_SIZE, past_due_has_access=True):
    """One page of export rows for customers with id > after_id: (rows, last id or None). Call in a block."""
    customers = list(Customer
                     .select(Customer.id, Customer.external_user_id, Customer.email,
                             Customer.stripe_customer_id, Customer.created_at)
                     .where((Customer.project == project_id) & (Customer.id > after_id))
                     .order_by(Customer.id)
                     .limit(size)
                     .dicts())
    if not customers:
        return [], None
    by_customer = {}
    subs = (Subscription
            .select(Subscription.id, Subscription.customer, Subscription.status, Subscription.plan_slug,
                    Subscription.interval, Subscription.stripe_price_id, Subscription.current_period_end,
                    Subscription.cancel_at, Subscription.trial_end, Subscription.stripe_subscription_id,
                    Subscription.started_at)
            .where((Subscription.project == project_id)
                   & (Subscription.customer.in_([c["id"] for c in customers])))
            .dicts())
    for sub in subs:
        by_customer.setdefault(sub["customer"], []).append(sub)
    rows = []
    for customer in customers:
        sub = _current(by_customer.get(customer["id"]), past_due_has_access)
        rows.append({
            "external_user_id": customer["external_user_id"],
            "email": customer["email"],
            "stripe_customer_id": customer["stripe_customer_id"],
            "created_at": isoformat(customer["created_at"]),
            "subscription": None if sub is None else {
                "status": sub["status"],
                "has_access": has_access(sub["status"], past_due_has_access),
                "plan_slug": sub["plan_slug"] or None,
                "interval": sub["interval"] or None,
                "stripe_price_id": sub["stripe_price_id"] or None,
                "current_period_end": isoformat(sub["current_period_end"]),
                "cancel_at": isoformat(sub["cancel_at"]),
                "trial_end": isoformat(sub["trial_end"]),
                "stripe_subscription_id": sub["stripe_subscription_id"],
            },
        })
    return rows, customers[-1]["id"]


def pages(project, size=PAGE_SIZE):
    """Yield lists of export rows (dicts as in the JSON export), one short database block per page."""
    with block():
        past_due_has_access = Project.get_by_id(project.id).past_due_has_access  # fresh, not the cached key's
    after_id = 0
    while True:
        with block():
            rows, after_id = page(project.id, after_id, size, past_due_has_access)
        if not rows:
            return
        yield rows
        if len(rows) < size:
            return


def safe_cell(value):
    """A CSV cell: '' for None, true/false, and text that a spreadsheet will not run as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_line(row):
    """The CSV cells of one export row, in CSV_COLUMNS order."""
    sub = row["subscription"] or {}
    values = [row["external_user_id"], row["email"], row["stripe_customer_id"], row["created_at"]]
    values += [sub.get(name) for name in CSV_COLUMNS[4:]]
    return [safe_cell(value) for value in values]


def _csv_text(lines):
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(lines)
    return buffer.getvalue()


def chunks(project, fmt, size=PAGE_SIZE):
    """Yield the export of `project` as text chunks (one per page) in `fmt` ("json" or "csv").

    Nothing is yielded before the first page is read, so a database outage is still a clean 503.
    """
    if fmt == "csv":
        opening, closing = _csv_text([CSV_COLUMNS]), ""
    else:
        opening, closing = '{"customers":[', "]}"
    prefix = opening
    for rows in pages(project, size):
        if fmt == "csv":
            yield prefix + _csv_text(csv_line(row) for row in rows)
        else:
            yield prefix + ",".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) for row in rows)
        prefix = "" if fmt == "csv" else ","
    yield (opening if prefix == opening else "") + closing
