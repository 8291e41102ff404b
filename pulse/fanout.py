"""Announcing a bulk change: many customers' `subscription.updated`, written in batches after the request.

A change that may move many customers' answers at once (the plan catalog, an access setting) calls
`collect` in its transaction before the change and `announce` after it. Up to INLINE_MAX customers
are announced in that transaction, as any change is; beyond that one OutboxFanout row per customer
is written by a single INSERT ... SELECT in the same transaction (so a commit followed by a crash
loses nothing), and the delivery loop of any process (pulse.delivery) turns the rows into messages,
BATCH customers per transaction. A batch's rows are locked (SKIP LOCKED on MySQL; SQLite's write
lock) and deleted in the transaction that writes its messages: two processes never expand one row,
and a batch that fails is expanded again from the start.

Order: a customer's message is the diff against the answer last announced to that customer, taken
under its CustomerState lock (pulse.outbox), and messages with one order key are delivered in id
order. A change announced before the queue reaches a customer therefore carries the bulk change with
it (its `changed` lists plan_slug as well), and the queued row then finds nothing left to say: the
tenant never hears an older answer after a newer one, and never hears one change twice.
"""

import json
from typing import Any

import peewee as pw

from pulse import outbox
from pulse.db import is_mysql, locking, transaction, utcnow
from pulse.models import Customer, CustomerState, OutboxFanout, Project, Subscription
from pulse.status import PUBLIC_COLUMNS

INLINE_MAX = 20  # customers announced inside the changing transaction; a larger change goes to the queue
BATCH = 100  # customers per expanding transaction: one turn of the delivery loop


def collect(where: Any) -> list[int] | None:
    """The customers of the Subscription rows matching `where`, or None once queued. Call before the change.

    In the changing transaction; pass the result to `announce` after the change. A locking read on
    MySQL: it sees the latest committed rows, as the change will.
    """
    query = Subscription.select(Subscription.customer).where(where).distinct().limit(INLINE_MAX + 1)
    found = [customer_id for (customer_id,) in locking(query).tuples()]
    if len(found) <= INLINE_MAX:
        return found
    OutboxFanout.insert_from(
        Subscription.select(Subscription.project, Subscription.customer).where(where).distinct(),
        [OutboxFanout.project, OutboxFanout.customer],
    ).execute()
    return None


def announce(project: Project, collected: list[int] | None) -> None:
    """After the change, in its transaction: announce what `collect` found, or wake the loop that expands the queue."""
    if collected is None:
        outbox.wake()  # runs after the commit (the request's block ends first)
    else:
        outbox.customers_changed(project, collected)


def expand(limit: int = BATCH) -> int:
    """Announce up to `limit` queued customers in one transaction; returns how many (0: none, or all held elsewhere).

    Call inside a db block, outside a transaction. A fixed number of statements per batch.
    """
    ids = [row_id for (row_id,) in OutboxFanout.select(OutboxFanout.id).order_by(OutboxFanout.id).limit(limit).tuples()]
    if not ids:
        return 0
    with transaction():
        query = OutboxFanout.select(OutboxFanout.id, OutboxFanout.project, OutboxFanout.customer).where(
            OutboxFanout.id.in_(ids)
        )
        rows = list((query.for_update("FOR UPDATE SKIP LOCKED") if is_mysql() else query).tuples())
        if rows:  # else another process holds (or has expanded) them: its batch, not ours
            _announce({customer_id: project_id for _, project_id, customer_id in rows})
            OutboxFanout.delete().where(OutboxFanout.id.in_([row_id for row_id, _, _ in rows])).execute()
    return len(rows)


def _announce(project_of: dict[int, int]) -> None:
    """outbox.customer_changed for each customer of {customer id: project id}, in bulk."""
    customers = sorted(project_of)
    # Every customer's lock before the first plain read: on MySQL that read fixes the snapshot the
    # answers come from, so it must follow each change committed by a holder of one of these locks.
    states = _locked_states(customers)
    missing = [customer_id for customer_id in customers if customer_id not in states]
    if missing:
        rows = [{"project": project_of[customer_id], "customer": customer_id} for customer_id in missing]
        CustomerState.insert_many(rows).on_conflict_ignore().execute()
        states.update(_locked_states(missing))
    identities = {
        row.pop("id"): row
        for row in Customer.select(Customer.id, Customer.external_user_id, Customer.email, Customer.stripe_customer_id)
        .where(Customer.id.in_(customers))
        .dicts()
    }
    subscriptions: dict[int, list[dict[str, Any]]] = {}
    columns = [getattr(Subscription, name) for name in ("id", "customer", "started_at", *PUBLIC_COLUMNS)]
    for row in Subscription.select(*columns).where(Subscription.customer.in_(customers)).dicts():
        subscriptions.setdefault(row["customer"], []).append(row)
    projects = {project.id: project for project in Project.select().where(Project.id.in_(set(project_of.values())))}
    answers: dict[int, str | None] = {}
    messages: dict[int, list[tuple[dict[str, Any], str]]] = {}
    for customer_id in customers:
        state, project = states.get(customer_id), projects.get(project_of[customer_id])
        if state is None or project is None or customer_id not in identities:
            continue  # deleted meanwhile
        new = outbox.answer_from(
            project, identities[customer_id], subscriptions.get(customer_id, []), state["features"]
        )
        old = json.loads(state["answer"]) if state["answer"] else None
        if new == old:
            continue
        answers[state["id"]] = json.dumps(new, sort_keys=True) if new is not None else None
        data = outbox.update_of(old, new)
        if data is not None:
            messages.setdefault(project.id, []).append((data, outbox.customer_order_key(customer_id)))
    if answers:
        CustomerState.update(answer=pw.Case(CustomerState.id, list(answers.items())), updated_at=utcnow()).where(
            CustomerState.id.in_(list(answers))
        ).execute()
    for project_id, items in messages.items():
        outbox.enqueue_many(project_id, "subscription.updated", items)


def _locked_states(customers: list[int]) -> dict[int, dict[str, Any]]:
    query = CustomerState.select(
        CustomerState.id, CustomerState.customer, CustomerState.answer, CustomerState.features
    ).where(CustomerState.customer.in_(customers))
    return {row["customer"]: row for row in locking(query).dicts()}


def queued() -> int:
    """How many queued customers wait to be announced."""
    return OutboxFanout.select().count()
