"""Versioned migrations: fresh databases are stamped, upgrades apply pending steps and keep data."""

import peewee as pw
import pytest
from playhouse.migrate import migrate as run_operations

from pulse import db, migrations
from pulse.models import Customer, MODELS, Project


def test_fresh_database_is_at_latest(db_url):
    db.bind(db_url)
    assert migrations.current_version() == migrations.LATEST
    assert migrations.pending() == []
    assert migrations.migrate_database() == []
    for model in MODELS:
        assert db.database.table_exists(model._meta.table_name)


def test_upgrade_applies_pending_steps_and_keeps_data(db_url, monkeypatch):
    db.bind(db_url)
    with db.block():
        project = Project.create(public_id="proj_upgrade", name="Old")
        Customer.create(project=project, external_user_id="u1", email="u1@x.test")

    nickname = pw.CharField(max_length=50, default="")

    def add_nickname(database, migrator):
        run_operations(migrator.add_column("customer", "nickname", nickname))

    steps = migrations.STEPS + [(migrations.LATEST + 1, "customer nickname", add_nickname)]
    monkeypatch.setattr(migrations, "STEPS", steps)
    try:
        assert [s[1] for s in migrations.pending()] == ["customer nickname"]
        assert migrations.migrate_database() == ["customer nickname"]
        assert migrations.current_version() == migrations.LATEST + 1
        assert migrations.migrate_database() == []
        with db.block() as database:
            columns = {c.name for c in database.get_columns("customer")}
            assert "nickname" in columns
            row = database.execute_sql("SELECT email, nickname FROM customer WHERE external_user_id = 'u1'").fetchone()
            assert tuple(row) == ("u1@x.test", "")
    finally:
        with db.block() as database:
            run_operations(migrations._migrator(database).drop_column("customer", "nickname"))
            migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version > migrations.LATEST).execute()


def test_unique_constraints_hold(db_url):
    db.bind(db_url)
    with db.block():
        project = Project.create(public_id="proj_unique", name="U")
        Customer.create(project=project, external_user_id="same")
        with pytest.raises(pw.IntegrityError):
            with db.database.atomic():
                Customer.create(project=project, external_user_id="same")
        other = Project.create(public_id="proj_other", name="O")
        Customer.create(project=other, external_user_id="same")  # unique per project only


def test_mysql_tables_are_innodb_utf8mb4(db_url):
    db.bind(db_url)
    if not db.is_mysql():
        with db.block() as database:
            assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        return
    with db.block() as database:
        rows = database.execute_sql(
            "SELECT table_name, engine, table_collation FROM information_schema.tables WHERE table_schema = DATABASE()"
        ).fetchall()
    assert rows
    for name, engine, collation in rows:
        assert engine == "InnoDB" and collation.startswith("utf8mb4"), (name, engine, collation)
    with db.block():
        project = Project.create(public_id="proj_emoji", name="Café ☕ 🚀")
        assert Project.get_by_id(project.id).name == "Café ☕ 🚀"


def test_identifiers_we_did_not_mint_compare_byte_for_byte(db_url):
    """Stripe ids, tenants' user ids and idempotency keys differ by case alone; MySQL must not merge them."""
    db.bind(db_url)
    exact = [("customer", "external_user_id"), ("customer", "stripe_customer_id"),
             ("subscription", "stripe_subscription_id"), ("webhook_event", "stripe_event_id"),
             ("idempotency_record", "key"), ("user", "email_key")]
    with db.block():
        project = Project.create(public_id="proj_case", name="Case")
        Customer.create(project=project, external_user_id="cus-A", stripe_customer_id="cus_AbC")
        Customer.create(project=project, external_user_id="cus-a", stripe_customer_id="cus_abc")
        assert Customer.get(Customer.stripe_customer_id == "cus_abc").external_user_id == "cus-a"
    if not db.is_mysql():
        return
    with db.block() as database:
        for table, column in exact:
            collation = database.execute_sql(
                "SELECT collation_name FROM information_schema.columns "
                "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = %s", (table, column)).fetchone()[0]
            assert collation.endswith("_bin"), (table, column, collation)
