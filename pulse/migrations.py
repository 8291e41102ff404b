"""Versioned schema migrations on playhouse.migrations.

A fresh database gets every table from the current models and is stamped with the newest
version (as Alembic's "create_all + stamp head"); an existing one runs each pending step in
order. To change the schema: change the model, then append a step that moves an existing
database to it, e.g. `migrate(migrator.add_column("customer", "name", field))`.
"""

import contextlib
import json
import logging
import unicodedata
from collections.abc import Callable, Iterable, Iterator

import peewee as pw
from playhouse.migrate import MySQLMigrator, SchemaMigrator, SqliteMigrator
from playhouse.migrate import migrate as run_operations

from pulse import emails
from pulse.db import database, is_mysql, utcnow
from pulse.models import MODELS, CheckoutLease, ExactCharField, User

log = logging.getLogger("pulse.migrations")
Step = Callable[[pw.Database, SchemaMigrator], None]


class SchemaVersion(pw.Model):
    version = pw.IntegerField(primary_key=True)
    name = pw.CharField(max_length=100)
    applied_at = pw.DateTimeField(default=utcnow)

    class Meta:
        database = database
        table_name = "schema_version"


def _initial(db: pw.Database, migrator: SchemaMigrator) -> None:
    db.create_tables(MODELS)


def _customer_history(db: pw.Database, migrator: SchemaMigrator) -> None:
    # Import here: the step creates the table as the models define it at version 2.
    from pulse.models import StripeCustomerHistory, WebhookEvent

    db.create_tables([StripeCustomerHistory], safe=True)
    run_operations(migrator.add_column("webhook_event", "reason", WebhookEvent.reason))


def _plan_items_and_catalog(db: pw.Database, migrator: SchemaMigrator) -> None:
    # Issue 10 items 2-6: the plan item's facts, pause_collection, the paused-collection policy, the catalog.
    from pulse.models import Plan, PlanPrice, Project, Subscription

    fields = Subscription._meta.fields
    run_operations(
        *(
            migrator.add_column("subscription", name, fields[name])
            for name in (
                "interval_count",
                "quantity",
                "unit_amount",
                "currency",
                "pause_behavior",
                "pause_resumes_at",
                "plan_slug_fallback",
            )
        )
    )
    # Not migrator.add_column: for a NOT NULL column it rebuilds the table on SQLite, and dropping the
    # old `project` table would cascade-delete every customer and subscription (foreign_keys is on).
    kind = "BOOL" if is_mysql(db) else "INTEGER"
    db.execute_sql(
        f"ALTER TABLE {Project._meta.table_name} ADD COLUMN paused_collection_has_access {kind} NOT NULL DEFAULT 1"
    )
    db.create_tables([Plan, PlanPrice], safe=True)
    # Until its next event, a stored row falls back to the slug it had.
    Subscription.update(plan_slug_fallback=Subscription.plan_slug).execute()


def email_identity_plan(rows: Iterable[tuple[int, str]]) -> tuple[dict[int, str], list[tuple[int, str, str, str]]]:
    """For (id, email) rows: ({id: key} to set, [(id, email, key, reason)] to flag).

    Per key (pulse.emails.key) the oldest account whose stored email is in plain form keeps it.
    Flagged: the other accounts of that key, and every account stored in a full-width or other
    compatibility form (how look-alikes were registered; on MySQL such an account may even hold
    another person's projects, issue 11 M3). Flagged accounts keep their data but cannot sign in.
    """
    by_key: dict[str, list[tuple[int, str]]] = {}
    for user_id, email in sorted(rows):
        by_key.setdefault(emails.key(email), []).append((user_id, email))
    keys: dict[int, str] = {}
    flagged: list[tuple[int, str, str, str]] = []
    for key, members in by_key.items():
        plain = [(i, e) for i, e in members if unicodedata.normalize("NFKC", e.strip()) == e.strip()]
        keeper = plain[0][0] if plain else None
        for user_id, email in members:
            if user_id == keeper:
                keys[user_id] = key
            elif (user_id, email) in plain:
                flagged.append((user_id, email, key, f"another account (id {keeper}) has the same address"))
            else:
                flagged.append((user_id, email, key, "stored in full-width or compatibility characters"))
    return keys, flagged


def _email_identity(db: pw.Database, migrator: SchemaMigrator) -> None:
    # Accounts are keyed by the NFKC, case-folded email, compared byte for byte (issue 11 item 4).
    run_operations(migrator.add_column("user", "email_key", ExactCharField(max_length=254, null=True)))
    rows = list(User.select(User.id, User.email).tuples())
    keys, flagged = email_identity_plan(rows)
    audit = pw.Table("audit_log", ("actor", "action", "user_id", "created_at", "detail")).bind(db)
    with db.atomic():
        for user_id, key in keys.items():
            User.update(email_key=key).where(User.id == user_id).execute()
        for user_id, email, key, reason in flagged:
            # Named in the log of `run.py migrate` and in the audit log, for the operator to resolve.
            log.warning("migration 4: account %s (%r) cannot sign in until resolved: %s", user_id, email, reason)
            # A plain table insert: the AuditLog model may have grown columns a later step adds.
            audit.insert(
                actor="migration",
                action="user.email_flagged",
                user_id=user_id,
                created_at=utcnow(),
                detail=json.dumps(
                    {"user_id": user_id, "email": email, "email_key": key, "reason": reason}, sort_keys=True
                ),
            ).execute()
    run_operations(migrator.drop_index("user", "user_email"), migrator.add_index("user", ("email_key",), True))


def _checkout_lease(db: pw.Database, migrator: SchemaMigrator) -> None:
    db.create_tables([CheckoutLease], safe=True)


def _sandbox_projects(db: pw.Database, migrator: SchemaMigrator) -> None:
    # Issue 15: the sandbox flag, and each sandbox project's simulated Stripe state.
    from pulse.models import Project, SandboxState

    # Raw ALTER as in step 3: a NOT NULL add_column would rebuild (and cascade-empty) `project` on SQLite.
    kind = "BOOL" if is_mysql(db) else "INTEGER"
    db.execute_sql(f"ALTER TABLE {Project._meta.table_name} ADD COLUMN sandbox {kind} NOT NULL DEFAULT 0")
    db.create_tables([SandboxState], safe=True)


def _outbox_and_entitlements(db: pw.Database, migrator: SchemaMigrator) -> None:
    # Issue 16: outgoing webhooks (endpoints, the outbox, deliveries) and Stripe entitlements per customer.
    from pulse.models import CustomerFeature, CustomerState, WebhookDelivery, WebhookEndpoint, WebhookMessage

    db.create_tables([CustomerState, CustomerFeature, WebhookEndpoint, WebhookMessage, WebhookDelivery], safe=True)


def _read_model_feed(db: pw.Database, migrator: SchemaMigrator) -> None:
    # Issue 14: the change feed that keeps every process's read model of GET /api/subscription coherent.
    from pulse import changefeed
    from pulse.models import ReadModelChange, WebhookEvent

    db.create_tables([ReadModelChange], safe=True)
    changefeed.create_triggers(db)
    # ... and the inbox worker's retry time (PULSE_WEBHOOK_APPLY=worker).
    run_operations(
        migrator.add_column("webhook_event", "retry_at", WebhookEvent.retry_at),
        migrator.add_index("webhook_event", ("outcome", "retry_at"), False),
    )


def _endpoint_event_filters(db: pw.Database, migrator: SchemaMigrator) -> None:
    # Issue 16: which event types each outgoing webhook endpoint receives (Stripe's enabled_events).
    if "enabled_events" in {column.name for column in db.get_columns("webhook_endpoint")}:
        return  # step 10 created the table from the current model
    db.execute_sql("ALTER TABLE webhook_endpoint ADD COLUMN enabled_events VARCHAR(255) NOT NULL DEFAULT '[\"*\"]'")


def _outbox_fanout(db: pw.Database, migrator: SchemaMigrator) -> None:
    # Issue 14: bulk changes announce their customers from a queue, and the catalog finds a price's rows by index.
    from pulse.models import OutboxFanout

    db.create_tables([OutboxFanout], safe=True)
    if "subscription_project_id_stripe_price_id" not in {index.name for index in db.get_indexes("subscription")}:
        run_operations(migrator.add_index("subscription", ("project_id", "stripe_price_id"), False))


# (version, name, step). Steps after the first receive the database and its migrator.
STEPS: list[tuple[int, str, Step]] = [
    (1, "initial schema", _initial),
    (2, "stripe customer history and webhook ignore reasons", _customer_history),
    (3, "plan items, pause_collection, plan catalog", _plan_items_and_catalog),
    (4, "console accounts keyed by normalised email", _email_identity),
    (5, "checkout lease: one checkout at a time per user", _checkout_lease),
    (9, "sandbox projects and their simulated Stripe", _sandbox_projects),
    (10, "outgoing webhooks outbox, customer entitlements", _outbox_and_entitlements),
    (11, "read model change feed, inbox retry time", _read_model_feed),
    (12, "outgoing webhook endpoints: enabled event types", _endpoint_event_filters),
    (20, "bulk announcements queue, subscription price index", _outbox_fanout),
]
LATEST = STEPS[-1][0]


def _fresh_extras(db: pw.Database) -> None:
    # What create_tables cannot make from the models: the change feed's triggers (step 11).
    from pulse import changefeed

    changefeed.create_triggers(db)


def _migrator(db: pw.Database) -> SchemaMigrator:
    return MySQLMigrator(db) if is_mysql(db) else SqliteMigrator(db)


def _set_table_options(db: pw.Database) -> None:
    # Set on every run: one process (the tests) may migrate SQLite and MySQL databases in turn.
    options = ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4", "COLLATE=utf8mb4_unicode_ci"] if is_mysql(db) else []
    for model in MODELS + [SchemaVersion]:
        model._meta.table_settings = options


@contextlib.contextmanager
def _migration_lock(db: pw.Database) -> Iterator[None]:
    # Two instances starting at once must not both run the same step.
    if is_mysql(db):
        db.execute_sql("SELECT GET_LOCK('pulse_migrate', 60)")
        try:
            yield
        finally:
            db.execute_sql("SELECT RELEASE_LOCK('pulse_migrate')")
    else:
        with db.atomic("IMMEDIATE"):
            yield


def current_version(db: pw.Database | None = None) -> int:
    """The applied schema version, 0 for an empty database."""
    db = db or database.obj
    if not db.table_exists("schema_version"):
        return 0
    top = SchemaVersion.select(pw.fn.MAX(SchemaVersion.version)).scalar()
    return top or 0


def pending(db: pw.Database | None = None) -> list[tuple[int, str, Step]]:
    """Steps not yet applied to the bound database, as (version, name, step), oldest first."""
    version = current_version(db)
    return [step for step in STEPS if step[0] > version]


def migrate_database(db: pw.Database | None = None) -> list[str]:
    """Bring the bound database to LATEST; return the list of applied step names."""
    db = db or database.obj
    _set_table_options(db)
    applied = []
    with db.connection_context() if db.is_closed() else contextlib.nullcontext():
        with _migration_lock(db):
            db.create_tables([SchemaVersion], safe=True)
            version = current_version(db)
            if version == 0 and not db.table_exists(MODELS[0]._meta.table_name):
                db.create_tables(MODELS, safe=True)
                _fresh_extras(db)
                for number, name, _ in STEPS:
                    SchemaVersion.create(version=number, name=name)
                applied = [name for _, name, _ in STEPS]
            else:
                migrator = _migrator(db)
                for number, name, step in STEPS:
                    if number <= version:
                        continue
                    step(db, migrator)
                    SchemaVersion.create(version=number, name=name)
                    applied.append(name)
    for name in applied:
        log.info("migration applied: %s", name)
    return applied
