"""Customer export rows (SPEC 3.2 shape) in keyset pages; a stand-in until pulse.export lands."""

import csv
import io
import json

from pulse.db import block, isoformat
from pulse.models import Customer, Subscription
from pulse.status import serialize

CSV_COLUMNS = ["external_user_id", "email", "stripe_customer_id", "created_at", "status", "has_access",
               "plan_slug", "interval", "stripe_price_id", "current_period_end", "cancel_at", "trial_end"]
PAGE = 500
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _page(project, after):
    with block():
        customers = list(Customer.select().where(Customer.project == project, Customer.id > after)
                         .order_by(Customer.id).limit(PAGE))
        latest = {}
        if customers:
            for sub in (Subscription.select().where(Subscription.customer.in_([c.id for c in customers]))
                        .order_by(Subscription.id)):
                latest[sub.customer_id] = sub
    return [(c, latest.get(c.id)) for c in customers]


def pages(project):
    """Lists of (customer, newest subscription or None), 500 at a time; each page is its own db block."""
    after = 0
    while True:
        rows = _page(project, after)
        if not rows:
            return
        yield rows
        after = rows[-1][0].id


def record(project, customer, sub):
    data = {"external_user_id": customer.external_user_id, "email": customer.email,
            "stripe_customer_id": customer.stripe_customer_id, "created_at": isoformat(customer.created_at),
            "subscription": serialize(customer, sub, project.past_due_has_access) if sub else None}
    return data


def _cell(value):
    text = "" if value is None else ("true" if value is True else "false" if value is False else str(value))
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_chunks(project):
    """CSV text chunks: the header, then one chunk per page."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    yield out.getvalue()
    for rows in pages(project):
        out = io.StringIO()
        writer = csv.writer(out)
        for customer, sub in rows:
            data = record(project, customer, sub)
            flat = dict(data, **(data["subscription"] or {}))
            writer.writerow([_cell(flat.get(col)) for col in CSV_COLUMNS])
        yield out.getvalue()


def json_chunks(project):
    """`{"customers": [...]}` in chunks, never the whole table in memory."""
    yield '{"customers": ['
    first = True
    for rows in pages(project):
        parts = [json.dumps(record(project, c, s), separators=(",", ":")) for c, s in rows]
        yield ("" if first else ",") + ",".join(parts)
        first = False
    yield "]}"
