"""The benchmark's databases: a fresh SQLite file or MySQL database, seeded users, applied-webhook counts."""

import os
import secrets
import shutil
import tempfile
import time
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from bench.harness import log

# ---------------------------------------------------------------- databases


def mysql_fresh(server_url):
    """Create a fresh database on the MySQL server of `server_url`; returns (url, drop function), or None."""
    import pymysql

    parts = urlsplit(server_url)
    server = dict(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
    )
    try:
        conn = pymysql.connect(**server, autocommit=True, connect_timeout=3)
    except pymysql.MySQLError as exc:
        log.warning("MySQL at %s:%s unreachable (%s): MySQL runs skipped", server["host"], server["port"], exc)
        return None
    name = f"pulse_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")

    def drop():
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()

    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, "")), drop


def sqlite_fresh():
    directory = tempfile.mkdtemp(prefix="pulse-bench-")
    return f"sqlite:///{directory}/pulse.db", lambda: shutil.rmtree(directory, ignore_errors=True)


def seed_customers(database_url, project_public_id, count, prefix, with_subscription=True, batch=2000):
    """Insert `count` customers (each with an active subscription) straight into the database."""
    from pulse import db
    from pulse.models import Customer, Plan, PlanPrice, Project, Subscription

    db.bind(database_url)
    now = db.utcnow()
    with db.block() as conn:
        project = Project.get(Project.public_id == project_public_id)
        if with_subscription:
            # The catalog sells the seeded price, as a tenant's would: without it the first checkout
            # learns the pair and re-resolves (and announces) every seeded subscription at once.
            plan = Plan.create(project=project.id, plan_slug="pro")
            PlanPrice.create(project=project.id, plan=plan, stripe_price_id="price_bench_pro")
        for start in range(0, count, batch):
            ids = range(start, min(start + batch, count))
            with conn.atomic():
                Customer.insert_many(
                    [
                        dict(
                            project=project.id,
                            external_user_id=f"{prefix}{i}",
                            email=f"{prefix}{i}@example.com",
                            stripe_customer_id=f"cus_{prefix}{i}",
                            created_at=now,
                            updated_at=now,
                        )
                        for i in ids
                    ]
                ).execute()
                if not with_subscription:
                    continue
                rows = (
                    Customer.select(Customer.id, Customer.external_user_id)
                    .where(
                        (Customer.project == project.id)
                        & (Customer.external_user_id.in_([f"{prefix}{i}" for i in ids]))
                    )
                    .tuples()
                )
                Subscription.insert_many(
                    [
                        dict(
                            project=project.id,
                            customer=cid,
                            stripe_subscription_id=f"sub_{ext}",
                            plan_slug="pro",
                            stripe_price_id="price_bench_pro",
                            interval="monthly",
                            stripe_status="active",
                            status="active",
                            current_period_end=now + timedelta(days=30),
                            started_at=now,
                            snapshot_at=0,
                            synced_at=now,
                            created_at=now,
                            updated_at=now,
                        )
                        for cid, ext in rows
                    ]
                ).execute()
    db.database.close()


def applied(database_url, project_public_id, acknowledged, deliveries, started, timeout=120.0):
    """Wait until every acknowledged event id is stored as applied; counts and the end-to-end rate.

    `applied_per_s` divides the deliveries (duplicates included) by the time from the first POST
    until the last event was applied (the same as the acknowledgement time when events are applied before the answer).
    """
    from pulse import db
    from pulse.models import Project, WebhookEvent

    db.bind(database_url)
    ids = sorted(acknowledged)
    deadline = time.monotonic() + timeout
    while True:
        with db.block():
            project = Project.get(Project.public_id == project_public_id)
            outcomes = {}
            for start in range(0, len(ids), 500):
                query = (
                    WebhookEvent.select(WebhookEvent.outcome, peewee_count())
                    .where(
                        WebhookEvent.project == project.id, WebhookEvent.stripe_event_id.in_(ids[start : start + 500])
                    )
                    .group_by(WebhookEvent.outcome)
                    .tuples()
                )
                for outcome, count in query:
                    outcomes[str(outcome)] = outcomes.get(str(outcome), 0) + count
        done = outcomes.get("processed", 0) + outcomes.get("ignored", 0) + outcomes.get("failed", 0)
        if done >= len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    db.database.close()
    return {
        "acknowledged_distinct": len(ids),
        "outcomes": outcomes,
        "all_applied": outcomes.get("processed", 0) == len(ids),
        "applied_s": round(elapsed, 2),
        "applied_per_s": round(deliveries / elapsed, 1),
    }


def customer_count(database_url, project_public_id):
    """How many customers the project has now (checkouts add some): the rows its export must hold."""
    from pulse import db
    from pulse.models import Customer, Project

    db.bind(database_url)
    with db.block():
        count = Customer.select().join(Project).where(Project.public_id == project_public_id).count()
    db.database.close()
    return count


def peewee_count():
    import peewee

    return peewee.fn.COUNT(peewee.SQL("*"))
