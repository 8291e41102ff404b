"""Versioned migrations: fresh databases are stamped, upgrades apply pending steps and keep data."""

import peewee as pw
import pytest
from playhouse.migrate import migrate as run_operations

from pulse import db, migrations
from pulse.models import MODELS, Customer, Project
from tests.migration_support import back_to_version_1


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
    exact = [
        ("customer", "external_user_id"),
        ("customer", "stripe_customer_id"),
        ("subscription", "stripe_subscription_id"),
        ("webhook_event", "stripe_event_id"),
        ("idempotency_record", "key"),
        ("user", "email_key"),
    ]
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
                "WHERE table_schema = DATABASE() AND table_name = %s AND column_name = %s",
                (table, column),
            ).fetchone()[0]
            assert collation.endswith("_bin"), (table, column, collation)


def test_upgrade_to_2_adds_customer_history_and_ignore_reasons(db_url):
    """A version-1 database (no stripe_customer_history, no webhook_event.reason) keeps its rows."""
    from pulse.models import StripeCustomerHistory, WebhookEvent

    db.bind(db_url)
    with db.block() as database:
        project = Project.create(public_id="proj_v1", name="V1")
        WebhookEvent.create(project=project, stripe_event_id="evt_old", type="invoice.paid", outcome="ignored")
        back_to_version_1(database)
        assert migrations.current_version() == 1
    assert "stripe customer history and webhook ignore reasons" in migrations.migrate_database()
    with db.block() as database:
        assert migrations.current_version() == migrations.LATEST
        assert "reason" in {c.name for c in database.get_columns("webhook_event")}
        row = WebhookEvent.get(WebhookEvent.stripe_event_id == "evt_old")
        assert (row.outcome, row.reason) == ("ignored", None)
        customer = Customer.create(project=project, external_user_id="u1")
        StripeCustomerHistory.create(project=project, customer=customer, stripe_customer_id="cus_1", reason="x")
        with pytest.raises(pw.IntegrityError):
            with database.atomic():
                StripeCustomerHistory.create(
                    project=project, customer=customer, stripe_customer_id="cus_1", reason="again"
                )


def test_step_3_adds_plan_items_pause_and_the_catalog_to_a_version_1_database(db_url):
    """A database from before issue 10 (version 1): the step keeps its rows and the rows keep their slug."""
    from pulse.models import Plan, PlanPrice, Subscription

    db.bind(db_url)
    new_columns = [
        "interval_count",
        "quantity",
        "unit_amount",
        "currency",
        "pause_behavior",
        "pause_resumes_at",
        "plan_slug_fallback",
    ]
    with db.block() as database:
        project = Project.create(public_id="proj_v1", name="V1")
        customer = Customer.create(project=project, external_user_id="u1", email="u1@x.test")
        Subscription.create(
            project=project,
            customer=customer,
            stripe_subscription_id="sub_v1",
            plan_slug="pro",
            stripe_price_id="price_pro",
            stripe_status="active",
            status="active",
        )
        back_to_version_1(database)
    assert [s[0] for s in migrations.pending()] == [step[0] for step in migrations.STEPS[1:]]
    assert "plan items, pause_collection, plan catalog" in migrations.migrate_database()
    with db.block() as database:
        assert set(new_columns) <= {c.name for c in database.get_columns("subscription")}
        row = Subscription.get(Subscription.stripe_subscription_id == "sub_v1")
        assert (row.plan_slug, row.plan_slug_fallback, row.quantity, row.pause_behavior) == ("pro", "pro", None, None)
        assert Project.get_by_id(project.id).paused_collection_has_access is True
        assert Plan.select().count() == 0 and PlanPrice.select().count() == 0
    assert migrations.current_version() == migrations.LATEST and migrations.pending() == []


def test_step_9_adds_sandbox_projects_to_a_version_1_database(db_url):
    """Existing projects stay live projects; each sandbox project gets at most one simulator state row."""
    from pulse.models import SandboxState

    db.bind(db_url)
    with db.block() as database:
        project = Project.create(public_id="proj_v1", name="V1")
        Customer.create(project=project, external_user_id="u1")
        back_to_version_1(database)
    assert "sandbox projects and their simulated Stripe" in migrations.migrate_database()
    with db.block() as database:
        row = Project.get_by_id(project.id)
        assert row.sandbox is False and Customer.select().where(Customer.project == row).count() == 1
        SandboxState.create(project=row, state="{}")
        with pytest.raises(pw.IntegrityError):
            with database.atomic():
                SandboxState.create(project=row, state="{}")
    assert migrations.current_version() == migrations.LATEST


def test_step_10_adds_the_outbox_and_entitlements_to_a_version_1_database(db_url):
    """A database from before issue 16 keeps its rows; the outbox and entitlement tables start empty."""
    from pulse.models import CustomerFeature, CustomerState, WebhookDelivery, WebhookEndpoint, WebhookMessage

    tables = [CustomerState, CustomerFeature, WebhookEndpoint, WebhookMessage, WebhookDelivery]
    db.bind(db_url)
    with db.block() as database:
        project = Project.create(public_id="proj_v3", name="V3")
        Customer.create(project=project, external_user_id="u1", email="u1@x.test")
        back_to_version_1(database)
    assert "outgoing webhooks outbox, customer entitlements" in migrations.migrate_database()
    with db.block() as database:
        assert all(database.table_exists(model._meta.table_name) for model in tables)
        assert Customer.get(Customer.external_user_id == "u1").email == "u1@x.test"
        assert sum(model.select().count() for model in tables) == 0
    assert migrations.current_version() == migrations.LATEST and migrations.pending() == []
