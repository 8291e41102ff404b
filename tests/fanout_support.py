"""Many subscriptions at once, for bulk announcements (pulse.fanout): seeding, counting queries, reading messages."""

import contextlib
import json
import logging
from datetime import timedelta

from pulse import db, fanout
from pulse.models import Customer, OutboxFanout, Subscription, WebhookEndpoint, WebhookMessage
from pulse.security import SecretBox
from tests.support import TEST_SECRET

CHUNK = 500


def seed(project, groups, prefix="u"):
    """Customers with one subscription each, groups = [(count, price id, plan_slug, status)]: user ids per group.

    Inserted in bulk (a few queries per 500 rows), then announced once with no endpoint, so the
    stored answers are the ones a tenant would have heard before the test's change.
    """
    started = db.utcnow() - timedelta(days=10)
    users, n = [], 0
    with db.block(), db.transaction():
        for count, price_id, slug, status in groups:
            names = [f"{prefix}{n + i}" for i in range(count)]
            n += count
            users.append(names)
            for at in range(0, count, CHUNK):
                chunk = names[at : at + CHUNK]
                Customer.insert_many(
                    [
                        {
                            "project": project.id,
                            "external_user_id": u,
                            "email": f"{u}@x.test",
                            "stripe_customer_id": f"cus_{u}",
                        }
                        for u in chunk
                    ]
                ).execute()
                ids = dict(
                    Customer.select(Customer.external_user_id, Customer.id)
                    .where(Customer.project == project.id, Customer.external_user_id.in_(chunk))
                    .tuples()
                )
                Subscription.insert_many(
                    [
                        {
                            "project": project.id,
                            "customer": ids[u],
                            "stripe_subscription_id": f"sub_{u}_{price_id}",
                            "plan_slug": slug,
                            "plan_slug_fallback": slug,
                            "stripe_price_id": price_id,
                            "interval": "monthly",
                            "stripe_status": status,
                            "status": status,
                            "started_at": started,
                            "current_period_end": started + timedelta(days=30),
                        }
                        for u in chunk
                    ]
                ).execute()
        OutboxFanout.insert_from(
            Customer.select(Customer.project, Customer.id).where(Customer.project == project.id),
            [OutboxFanout.project, OutboxFanout.customer],
        ).execute()
    expand_all()
    return users


def add_old_subscription(project, external_user_id, price_id, slug):
    """A canceled subscription beside the customer's current one: it moves with the catalog, the answer does not."""
    with db.block():
        customer = Customer.get(Customer.project == project.id, Customer.external_user_id == external_user_id)
        Subscription.create(
            project=project.id,
            customer=customer,
            stripe_subscription_id=f"sub_old_{external_user_id}",
            plan_slug=slug,
            plan_slug_fallback=slug,
            stripe_price_id=price_id,
            stripe_status="canceled",
            status="canceled",
            started_at=db.utcnow() - timedelta(days=400),
        )


def expand_all():
    """Run the queue dry as the delivery loop would; returns the number of batches."""
    batches = 0
    with db.block():
        while fanout.expand():
            batches += 1
    return batches


def add_endpoint(project, url="https://hooks.example.test/pulse"):
    with db.block():
        return WebhookEndpoint.create(
            public_id="we_" + url[-12:].replace("/", "_"),
            project=project.id,
            url=url,
            secret=SecretBox(TEST_SECRET).encrypt("whsec_" + "a" * 32),
        )


def updates(project):
    """{external_user_id: [data of each subscription.updated]} in the order they were written."""
    found: dict[str, list] = {}
    with db.block():
        rows = (
            WebhookMessage.select(WebhookMessage.payload)
            .where(WebhookMessage.project == project.id, WebhookMessage.event_type == "subscription.updated")
            .order_by(WebhookMessage.id)
        )
        for (payload,) in rows.tuples():
            data = json.loads(payload)["data"]
            found.setdefault(data["object"]["external_user_id"], []).append(data)
    return found


class _Counter(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.statements = []

    def emit(self, record):
        message = record.msg
        self.statements.append(message[0] if isinstance(message, tuple) else str(message))


@contextlib.contextmanager
def counted_queries():
    """Every statement Peewee sends meanwhile (its debug log): `with counted_queries() as sent: ...; len(sent)`."""
    logger = logging.getLogger("peewee")
    counter, level = _Counter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter.statements
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
