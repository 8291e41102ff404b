"""Versioned schema migrations on playhouse.migrations.

A fresh database gets every table from the current models and is stamped with the newest
version (as Alembic's "create_all + stamp head"); an existing one runs each pending step in
order. To change the schema: change the model, then append a step that moves an existing
database to it, e.g. `migrate(migrator.add_column("customer", "name", field))`.
"""

import contextlib
import logging

import peewee as pw
from playhouse.migrate import MySQLMigrator, SqliteMigrator, migrate as run_operations

from pulse.db import database, is_mysql, utcnow
from pulse.models import MODELS

log = logging.getLogger("pulse.migrations")


class SchemaVersion(pw.Model):
    version = pw.IntegerField(primary_key=True)
    name = pw.CharField(max_length=100)
    applied_at = pw.DateTimeField(default=utcnow)

    class Meta:
        database = database
        table_name = "schema_version"


def _initial(db, migrator):
    db.create_tables(MODELS)


def _customer_history(db, migrator):
    # Import here: the step creates the table as the models define it at version 2.
    from pulse.models import StripeCustomerHistory, WebhookEvent

    db.create_tables([StripeCustomerHistory], safe=True)
    run_operations(migrator.add_column("webhook_event", "reason", WebhookEvent.reason))
def _plan_items_and_catalog(db, migrator):
    # Issue 10 items 2-6: the plan item's facts, pause_collection, the paused-collection policy, the catalog.
    from pulse.models import Plan, PlanPrice, Project, Subscription
    fields = Subscription._meta.fields
    run_operations(*(migrator.add_column("subscription", name, fields[name])
                     for name in ("interval_count", "quantity", "unit_amount", "currency", "pause_behavior",
                                  "pause_resumes_at", "plan_slug_fallback")))
    # Not migrator.add_column: for a NOT NULL column it rebuilds the table on SQLite, and dropping the
    # old `project` table would cascade-delete every customer and subscription (foreign_keys is on).
    kind = "BOOL" if is_mysql(db) else "INTEGER"
    db.execute_sql(f"ALTER TABLE {Project._meta.table_name} ADD COLUMN paused_collection_has_access {kind} "
                   "NOT NULL DEFAULT 1")
    db.create_tables([Plan, PlanPrice], safe=True)
    # Until its next event, a stored row falls back to the slug it had.
    Subscription.update(plan_slug_fallback=Subscription.plan_slug).execute()


def _read_model_feed(db, migrator):
    # Issue 14: the change feed that keeps every process's read model of GET /api/subscription coherent.
    from pulse import changefeed
    from pulse.models import ReadModelChange, WebhookEvent

    db.create_tables([ReadModelChange], safe=True)
    changefeed.create_triggers(db)
    # ... and the inbox worker's retry time (PULSE_WEBHOOK_APPLY=worker).
    run_operations(migrator.add_column("webhook_event", "retry_at", WebhookEvent.retry_at),
                   migrator.add_index("webhook_event", ("outcome", "retry_at"), False))


# (version, name, step). Steps after the first receive the database and its migrator.
STEPS = [
    (1, "initial schema", _initial),
    (2, "stripe customer history and webhook ignore reasons", _customer_history),
    (3, "plan items, pause_collection, plan catalog", _plan_items_and_catalog),
    (11, "read model change feed, inbox retry time", _read_model_feed),
]
LATEST = STEPS[-1][0]


def _fresh_extras(db):
    # What create_tables cannot make from the models: the change feed's triggers (step 11).
    from pulse import changefeed

    changefeed.create_triggers(db)


def _migrator(db):
    return MySQLMigrator(db) if is_mysql(db) else SqliteMigrator(db)


def _set_table_options(db):
    # Set on every run: one process (the tests) may migrate SQLite and MySQL databases in turn.
    options = ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4", "COLLATE=utf8mb4_unicode_ci"] if is_mysql(db) else []
    for model in MODELS + [SchemaVersion]:
        model._meta.table_settings = options


@contextlib.contextmanager
def _migration_lock(db):
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


def pending(db: pw.Database | None = None) -> list[tuple]:
    """Steps not yet applied to the bound database."""
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
