"""Outgoing webhooks to the tenant's app: the transactional outbox and what each event says (see pulse.endpoints).

A message row (and one delivery row per enabled endpoint) is written in the transaction of the
change it announces, so a change is never announced without being stored, nor stored without being
announced; pulse.delivery sends the rows. Bodies follow Standard Webhooks: {type, timestamp, data}.
`subscription.updated` is written by `customer_changed`, which the writers of pulse.subscriptions,
pulse.plans, pulse.projects and pulse.entitlements call after each change of stored state (a change
to many customers at once goes through pulse.fanout's queue).
"""

import json
import time

import peewee as pw

from pulse.db import database, is_mysql, isoformat, utcnow
from pulse.models import (
    Customer,
    CustomerState,
    Project,
    Subscription,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
)
from pulse.security import public_id
from pulse.status import current, policy_of, public_subscription, row_has_access

EVENT_TYPES = ("subscription.updated", "checkout.completed", "customer.deleted", "webhook.test")
ALL_EVENTS = "*"
PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
WAKERS: list = []  # callables that wake this process's delivery loop (pulse.delivery registers one)


def now_ms():
    return int(time.time() * 1000)


# ---------------------------------------------------------------- the outbox


def wake():
    """Tell this process's delivery loop that a message may be due (it runs after the commit: no await in a block)."""
    for waker in list(WAKERS):
        waker()


def receives(endpoint, event_type):
    """Whether `endpoint` chose to receive `event_type` (its enabled_events, Stripe's filter)."""
    chosen = json.loads(endpoint.enabled_events)
    return ALL_EVENTS in chosen or event_type in chosen


def enqueue(project, event_type, data, order_key, endpoints=None):
    """Write one message and its deliveries (to each enabled endpoint that receives the type, or to `endpoints`).

    Call in the transaction of the change.

    Returns the WebhookMessage, or None when the project has no endpoint to send it to.
    """
    if endpoints is None:
        enabled = WebhookEndpoint.select().where(WebhookEndpoint.project == project, WebhookEndpoint.enabled == True)  # noqa: E712
        targets = [endpoint for endpoint in enabled if receives(endpoint, event_type)]
    else:
        targets = endpoints
    if not targets:
        return None
    msg_id = public_id("msg", 24)
    created = now_ms()
    body = {"type": event_type, "timestamp": isoformat(utcnow()), "id": msg_id, "data": data}
    message = WebhookMessage.create(
        public_id=msg_id,
        project=project,
        event_type=event_type,
        payload=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        created_ms=created,
    )
    WebhookDelivery.insert_many(
        [
            {
                "project": project.id if isinstance(project, Project) else project,
                "message": message.id,
                "endpoint": endpoint.id,
                "order_key": order_key[:64],
                "next_attempt_ms": created,
            }
            for endpoint in targets
        ]
    ).execute()
    wake()
    return message


def enqueue_many(project, event_type, items):
    """enqueue for a batch: one message per (data, order key), in a fixed number of statements; returns the count."""
    enabled = WebhookEndpoint.select().where(WebhookEndpoint.project == project, WebhookEndpoint.enabled == True)  # noqa: E712
    targets = [endpoint for endpoint in enabled if receives(endpoint, event_type)]
    if not targets or not items:
        return 0
    created, stamp = now_ms(), isoformat(utcnow())
    project = project.id if isinstance(project, Project) else project
    messages = []
    for data, _ in items:
        msg_id = public_id("msg", 24)
        body = {"type": event_type, "timestamp": stamp, "id": msg_id, "data": data}
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        messages.append(
            {
                "public_id": msg_id,
                "project": project,
                "event_type": event_type,
                "payload": payload,
                "created_ms": created,
            }
        )
    WebhookMessage.insert_many(messages).execute()
    ids = [message["public_id"] for message in messages]
    pk = dict(
        WebhookMessage.select(WebhookMessage.public_id, WebhookMessage.id)
        .where(WebhookMessage.public_id.in_(ids))
        .tuples()
    )
    WebhookDelivery.insert_many(
        [
            {
                "project": project,
                "message": pk[message["public_id"]],
                "endpoint": endpoint.id,
                "order_key": order_key[:64],
                "next_attempt_ms": created,
            }
            for message, (_, order_key) in zip(messages, items, strict=True)
            for endpoint in targets
        ]
    ).execute()
    wake()
    return len(messages)


def resend(delivery):
    """Send a delivery again (same webhook-id): a new pending delivery after the ones it ordered."""
    WebhookDelivery.create(
        project=delivery.project_id,
        message=delivery.message_id,
        endpoint=delivery.endpoint_id,
        order_key=delivery.order_key,
        next_attempt_ms=now_ms(),
    )
    wake()


def send_test(project, endpoint):
    """Queue a `webhook.test` event to one endpoint."""
    return enqueue(
        project,
        "webhook.test",
        {"endpoint": endpoint.public_id, "message": "a test event from PaymentPulse"},
        f"test:{endpoint.id}",
        endpoints=[endpoint],
    )


def deliveries_of(project, endpoint=None, limit=100):
    query = (
        WebhookDelivery.select(WebhookDelivery, WebhookMessage, WebhookEndpoint)
        .join(WebhookMessage)
        .switch(WebhookDelivery)
        .join(WebhookEndpoint)
        .where(WebhookDelivery.project == project)
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    if endpoint is not None:
        query = query.where(WebhookDelivery.endpoint == endpoint)
    return list(query)


# ---------------------------------------------------------------- what the tenant is told about a customer


def customer_order_key(customer_id):
    return f"cus:{customer_id}"


def answer_of(project, customer):
    """GET /api/subscription's body for `customer` now (with `features`), or None without a subscription."""
    rows = list(Subscription.select().where(Subscription.customer == customer.id))
    state = CustomerState.get_or_none(CustomerState.customer == customer.id)
    identity = {
        "external_user_id": customer.external_user_id,
        "email": customer.email,
        "stripe_customer_id": customer.stripe_customer_id,
    }
    return answer_from(project, identity, rows, state.features if state is not None else None)


def answer_from(project, identity, rows, features):
    """answer_of from what it reads: the customer's fields, its Subscription rows (models or dicts), features JSON."""
    if not rows:
        return None
    policy = policy_of(project)
    row = current(rows, policy)
    body = public_subscription(row, policy, sum(1 for r in rows if row_has_access(r, policy)), identity)
    body["features"] = json.loads(features) if features else []
    return body


def update_of(old, new):
    """subscription.updated's data for an answer moved from `old` to `new`, or None when there is nothing to say."""
    if new is None or new == old:
        return None
    changed = sorted(key for key in new if old is None or old.get(key) != new[key])
    previous = {key: old.get(key) for key in changed} if old is not None else {}
    return {"object": new, "changed": changed, "previous_attributes": previous}


def state_row(project, customer_id):
    query = CustomerState.select().where(CustomerState.customer == customer_id)
    state = (query.for_update() if is_mysql() else query).first()
    if state is None:
        try:
            with database.atomic():
                state = CustomerState.create(project=project, customer=customer_id)
        except pw.IntegrityError:
            state = (query.for_update() if is_mysql() else query).first()
    return state


def customer_changed(project, customer_id):
    """Announce `subscription.updated` when the customer's public answer moved. Call in the changing transaction.

    The last announced answer is stored (CustomerState.answer, row locked), so the comparison holds
    whatever changed it: a webhook, a lifecycle call, sync-stripe, the catalog, a setting, a deletion.
    Returns the message, or None when nothing visible changed.
    """
    customer = Customer.get_or_none(Customer.id == customer_id)
    if customer is None:
        return None
    if not isinstance(project, Project):
        project = Project.get_by_id(project)
    state = state_row(project, customer.id)
    new = answer_of(project, customer)
    old = json.loads(state.answer) if state.answer else None
    if new == old:
        return None
    CustomerState.update(
        answer=json.dumps(new, sort_keys=True) if new is not None else None, updated_at=utcnow()
    ).where(CustomerState.id == state.id).execute()
    data = update_of(old, new)
    return None if data is None else enqueue(project, "subscription.updated", data, customer_order_key(customer.id))


def customers_changed(project, customer_ids):
    for customer_id in sorted(set(customer_ids)):
        customer_changed(project, customer_id)


def customers_of_subscriptions(query):
    """The customer ids of the Subscription rows matching `query` (a where-clause expression)."""
    return [row.customer_id for row in Subscription.select(Subscription.customer).where(query).distinct()]


def checkout_completed(project, customer, session_id, stripe_subscription_id):
    """Announce `checkout.completed` (once per Checkout Session: the inbox applies an event once)."""
    return enqueue(
        project,
        "checkout.completed",
        {
            "external_user_id": customer.external_user_id,
            "email": customer.email,
            "stripe_customer_id": customer.stripe_customer_id,
            "checkout_session_id": session_id,
            "stripe_subscription_id": stripe_subscription_id,
            "subscription": answer_of(project, customer),
        },
        customer_order_key(customer.id),
    )


def customer_deleted(project, customer, stripe_customer_id):
    """Announce `customer.deleted`: the user's Stripe customer was deleted in Stripe."""
    return enqueue(
        project,
        "customer.deleted",
        {
            "external_user_id": customer.external_user_id,
            "email": customer.email,
            "stripe_customer_id": stripe_customer_id,
        },
        customer_order_key(customer.id),
    )
