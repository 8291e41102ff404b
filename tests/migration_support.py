"""Test helper: turn a fresh database back into one made by version 1 of the schema, to test upgrades."""

from playhouse.migrate import migrate as run_operations

from pulse import changefeed, db, migrations
from pulse.models import (
    CheckoutLease,
    CustomerFeature,
    CustomerState,
    OutboxFanout,
    Plan,
    PlanPrice,
    ReadModelChange,
    SandboxState,
    StripeCustomerHistory,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookMessage,
)


def back_to_version_1(database):
    """Undo every step after the first, as a database made by version 1 of the schema looks."""
    migrator = migrations._migrator(database)
    if not db.is_mysql():
        database.execute_sql("PRAGMA foreign_keys = OFF")  # SQLite drops columns by rebuilding the table
    # step 20: the bulk announcements queue and the subscription price index
    database.drop_tables([OutboxFanout])
    run_operations(migrator.drop_index("subscription", "subscription_project_id_stripe_price_id"))
    # step 12: the event types each outgoing webhook endpoint receives
    run_operations(migrator.drop_column("webhook_endpoint", "enabled_events"))
    # step 11: the read model's change feed and the inbox retry time
    for name in changefeed.trigger_names():
        database.execute_sql(f"DROP TRIGGER IF EXISTS {name}")
    database.drop_tables([ReadModelChange])
    run_operations(
        migrator.drop_index("webhook_event", "webhook_event_outcome_retry_at"),
        migrator.drop_column("webhook_event", "retry_at"),
    )
    # step 10: outgoing webhooks outbox, customer entitlements
    database.drop_tables([WebhookDelivery, WebhookMessage, WebhookEndpoint, CustomerFeature, CustomerState])
    # step 9: sandbox projects
    database.drop_tables([SandboxState])
    run_operations(migrator.drop_column("project", "sandbox"))
    # step 5: checkout leases
    database.drop_tables([CheckoutLease])
    # step 4: accounts keyed by the normalised email (back to a unique email)
    run_operations(
        migrator.drop_index("user", "user_email_key"),
        migrator.drop_column("user", "email_key"),
        migrator.add_index("user", ("email",), True),
    )
    # step 3: plan items, pause_collection, plan catalog
    run_operations(
        *(
            migrator.drop_column("subscription", name)
            for name in (
                "interval_count",
                "quantity",
                "unit_amount",
                "currency",
                "pause_behavior",
                "pause_resumes_at",
                "plan_slug_fallback",
            )
        ),
        migrator.drop_column("project", "paused_collection_has_access"),
    )
    database.drop_tables([PlanPrice, Plan])
    # step 2: customer history and ignore reasons
    database.drop_tables([StripeCustomerHistory])
    run_operations(migrator.drop_column("webhook_event", "reason"))
    if not db.is_mysql():
        database.execute_sql("PRAGMA foreign_keys = ON")
    migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version > 1).execute()
