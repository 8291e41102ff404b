"""One catalog change over N subscriptions: the request's wall time and statement count (issue 14, docs/performance.md).

    python -m bench.catalog_change --n 5000 [--database-url mysql://root@127.0.0.1:3306/pulse_x]

Seeds one project with N customers, each with an active subscription on `price_a` sold as
"starter" and already announced once, and an outgoing webhook endpoint; then PUT /api/plans/pro
with `price_a` (plans.set_prices) moves every one of them. The MySQL database is emptied first.
Uses only what the code before the fan-out queue had too, so it measures both sides.
"""

import argparse
import json
import logging
import tempfile
import time
from datetime import timedelta

from pulse import changefeed, db, outbox, plans, projects
from pulse.migrations import migrate_database
from pulse.models import Customer, CustomerState, Subscription, WebhookEndpoint, WebhookMessage
from pulse.security import SecretBox

CHUNK = 500


class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        self.count += 1


def _fresh(url):
    if url.startswith("mysql"):
        import pymysql
        from playhouse.db_url import parse

        params = parse(url)
        name = params.pop("database")
        conn = pymysql.connect(**params, autocommit=True)
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        conn.close()
    db.bind(url)
    migrate_database()


def _seed(project, n):
    started = db.utcnow() - timedelta(days=10)
    with db.block(), db.transaction():
        for at in range(0, n, CHUNK):
            users = [f"u{i}" for i in range(at, min(n, at + CHUNK))]
            Customer.insert_many(
                [
                    {
                        "project": project.id,
                        "external_user_id": u,
                        "email": f"{u}@x.test",
                        "stripe_customer_id": f"cus_{u}",
                    }
                    for u in users
                ]
            ).execute()
            ids = dict(
                Customer.select(Customer.external_user_id, Customer.id)
                .where(Customer.project == project.id, Customer.external_user_id.in_(users))
                .tuples()
            )
            Subscription.insert_many(
                [
                    {
                        "project": project.id,
                        "customer": ids[u],
                        "stripe_subscription_id": f"sub_{u}",
                        "plan_slug": "starter",
                        "plan_slug_fallback": "starter",
                        "stripe_price_id": "price_a",
                        "interval": "monthly",
                        "stripe_status": "active",
                        "status": "active",
                        "started_at": started,
                        "current_period_end": started + timedelta(days=30),
                    }
                    for u in users
                ]
            ).execute()
            # What the tenant last heard: the same answer with each customer's own identity.
            template = outbox.answer_of(project, Customer.get_by_id(ids[users[0]]))
            CustomerState.insert_many(
                [
                    {
                        "project": project.id,
                        "customer": ids[u],
                        "answer": json.dumps(
                            {
                                **template,
                                "external_user_id": u,
                                "email": f"{u}@x.test",
                                "stripe_customer_id": f"cus_{u}",
                            },
                            sort_keys=True,
                        ),
                    }
                    for u in users
                ]
            ).execute()
        WebhookEndpoint.create(
            public_id="we_bench",
            project=project,
            url="https://hooks.example.test/",
            secret=SecretBox("k" * 32).encrypt("whsec_x"),
        )


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args(argv)
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/catalog.db"
    _fresh(url)
    with db.block():
        project = projects.create_project(
            "Bench", "bench@catalog.test", SecretBox("k" * 32), admin_password="correct horse battery"
        ).project
    _seed(project, args.n)
    feed = changefeed.Feed()
    with db.block() as handle:
        feed.changes(handle)  # a process's read model, positioned before the change
    counter, logger = _Count(), logging.getLogger("peewee")
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    started = time.perf_counter()
    with db.block():
        plans.set_prices(project, "pro", ["price_a"])
    request_s = time.perf_counter() - started
    logger.removeHandler(counter)
    result = {
        "backend": url.split(":", 1)[0],
        "n": args.n,
        "request_s": round(request_s, 3),
        "statements": counter.count,
    }
    started = time.perf_counter()
    with db.block() as handle:
        result["feed_rows"] = len(feed.changes(handle) or [])  # what each process reads once after the change
    result["feed_read_s"] = round(time.perf_counter() - started, 3)
    try:
        from pulse import fanout
    except ImportError:  # the code before the queue
        fanout = None
    if fanout is not None:
        started, batches = time.perf_counter(), 0
        with db.block():
            while fanout.expand():
                batches += 1
        result.update(expand_s=round(time.perf_counter() - started, 3), batches=batches)
    with db.block():
        result["messages"] = WebhookMessage.select().where(WebhookMessage.project == project).count()
    print(json.dumps(result))
    db.database.close()


if __name__ == "__main__":
    main()
