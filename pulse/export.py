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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from typing import Any

from pulse import status
from pulse.db import block, isoformat, utcnow
from pulse.models import Customer, Project, Subscription

PAGE_SIZE = 500
FORMATS = {"json": "application/json; charset=UTF-8", "csv": "text/csv; charset=UTF-8"}
# SPEC 3.2's columns, then the ones added since (appended, so positional readers keep working).
CSV_COLUMNS = (
    "external_user_id",
    "email",
    "stripe_customer_id",
    "created_at",
    "status",
    "has_access",
    "plan_slug",
    "interval",
    "stripe_price_id",
    "current_period_end",
    "cancel_at",
    "trial_end",
    "interval_count",
    "quantity",
    "pause_behavior",
    "pause_resumes_at",
    "subscriptions_with_access",
)
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def filename(project: Project, fmt: str, today: date | None = None) -> str:
    """customers-<project public id>-<YYYY-MM-DD>.<fmt>"""
    return f"customers-{project.public_id}-{(today or utcnow().date()).isoformat()}.{fmt}"


def page(
    project_id: int, after_id: int = 0, size: int = PAGE_SIZE, policy: status.Policy = status.DEFAULT_POLICY
) -> tuple[list[dict[str, Any]], int | None]:
    """One page of export rows for customers with id > after_id: (rows, last id or None). Call in a block."""
    customers = list(
        Customer.select(
            Customer.id, Customer.external_user_id, Customer.email, Customer.stripe_customer_id, Customer.created_at
        )
        .where((Customer.project == project_id) & (Customer.id > after_id))
        .order_by(Customer.id)
        .limit(size)
        .dicts()
    )
    if not customers:
        return [], None
    by_customer: dict[int, list[dict[str, Any]]] = {}
    columns = [getattr(Subscription, name) for name in status.PUBLIC_COLUMNS]
    subs = (
        Subscription.select(Subscription.id, Subscription.customer, Subscription.started_at, *columns)
        .where((Subscription.project == project_id) & (Subscription.customer.in_([c["id"] for c in customers])))
        .dicts()
    )
    for sub in subs:
        by_customer.setdefault(sub["customer"], []).append(sub)
    rows: list[dict[str, Any]] = []
    for customer in customers:
        subs = by_customer.get(customer["id"], [])
        sub = status.current(subs, policy)
        with_access = sum(1 for s in subs if status.row_has_access(s, policy))
        rows.append(
            {
                "external_user_id": customer["external_user_id"],
                "email": customer["email"],
                "stripe_customer_id": customer["stripe_customer_id"],
                "created_at": isoformat(customer["created_at"]),
                "subscription": None if sub is None else status.public_subscription(sub, policy, with_access),
            }
        )
    return rows, customers[-1]["id"]


def pages(project: Project, size: int = PAGE_SIZE) -> Iterator[list[dict[str, Any]]]:
    """Yield lists of export rows (dicts as in the JSON export), one short database block per page."""
    with block():
        policy = status.policy_of(Project.get_by_id(project.id))  # fresh, not the cached key's
    after_id = 0
    while True:
        with block():
            rows, last_id = page(project.id, after_id, size, policy)
        if last_id is None:  # no customer after after_id (rows is empty)
            return
        yield rows
        if len(rows) < size:
            return
        after_id = last_id


def safe_cell(value: object) -> str:
    """A CSV cell: '' for None, true/false, and text that a spreadsheet will not run as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def csv_line(row: Mapping[str, Any]) -> list[str]:
    """The CSV cells of one export row, in CSV_COLUMNS order."""
    sub = dict(row["subscription"] or {})
    pause = sub.pop("pause_collection", None) or {}
    sub["pause_behavior"], sub["pause_resumes_at"] = pause.get("behavior"), pause.get("resumes_at")
    values = [row["external_user_id"], row["email"], row["stripe_customer_id"], row["created_at"]]
    values += [sub.get(name) for name in CSV_COLUMNS[4:]]
    return [safe_cell(value) for value in values]


def _csv_text(lines: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(lines)
    return buffer.getvalue()


def chunks(project: Project, fmt: str, size: int = PAGE_SIZE) -> Iterator[str]:
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
