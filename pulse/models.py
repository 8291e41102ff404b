"""Peewee models for every entity of SPEC 2. Times are naive UTC."""

from typing import Any

import peewee as pw

from pulse.db import database, is_mysql, utcnow
from pulse.outcomes import Outcome
from pulse.status import Status


class LongTextField(pw.TextField):
    """TEXT on SQLite, LONGTEXT on MySQL (Stripe payloads outgrow 64 KB)."""

    field_type = "LONGTEXT"


def exact_collation(db: Any) -> str:
    """The binary, no-pad utf8mb4 collation of this MySQL/MariaDB server."""
    if db.server_version is None:
        db.connect(reuse_if_open=True)
    version = db.server_version or (0,)
    if version[0] >= 10:  # MariaDB numbers itself 10.x and up
        return "utf8mb4_nopad_bin"
    return "utf8mb4_0900_bin" if version[0] >= 8 else "utf8mb4_bin"


class ExactCharField(pw.CharField):
    """VARCHAR compared byte for byte, for ids we did not mint (MySQL would make "User-1" and "user-1 " one)."""

    def ddl_datatype(self, ctx: Any) -> Any:
        datatype = super().ddl_datatype(ctx)
        if is_mysql():
            collation = exact_collation(database.obj)
            return pw.NodeList((datatype, pw.SQL(f"CHARACTER SET utf8mb4 COLLATE {collation}")))
        return datatype


class BaseModel(pw.Model):
    class Meta:
        database = database
        legacy_table_names = False


class Project(BaseModel):
    public_id = pw.CharField(max_length=40, unique=True)
    name = pw.CharField(max_length=200)
    stripe_secret_key = pw.TextField(null=True)  # Fernet token, see pulse.security
    stripe_webhook_secret = pw.TextField(null=True)  # Fernet token
    past_due_has_access = pw.BooleanField(default=True)
    # Stripe keeps `active` while payment collection is paused; Stripe treats the pause as free service.
    paused_collection_has_access = pw.BooleanField(default=True)
    # SPEC 8: served by the built-in simulator (sandbox/) and only by it; fixed at creation.
    sandbox = pw.BooleanField(default=False)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class User(BaseModel):
    email = pw.CharField(max_length=254)  # as shown; the identity is email_key
    # pulse.emails.key(email), compared byte for byte. NULL marks an account the version-4 migration
    # found to be a look-alike of another: it cannot sign in until an operator resolves it.
    email_key = ExactCharField(max_length=254, unique=True, null=True)
    password_hash = pw.CharField(max_length=100)
    created_at = pw.DateTimeField(default=utcnow)
    password_changed_at = pw.DateTimeField(default=utcnow)


class Membership(BaseModel):
    user = pw.ForeignKeyField(User, backref="memberships", on_delete="CASCADE")
    project = pw.ForeignKeyField(Project, backref="memberships", on_delete="CASCADE")
    role = pw.CharField(max_length=20, default="admin")
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("user", "project"), True),)


class ApiKey(BaseModel):
    public_id = pw.CharField(max_length=40, unique=True)
    project = pw.ForeignKeyField(Project, backref="api_keys", on_delete="CASCADE")
    label = pw.CharField(max_length=100, default="")
    prefix = pw.CharField(max_length=24)
    key_hash = pw.CharField(max_length=64, unique=True)
    created_at = pw.DateTimeField(default=utcnow)
    last_used_at = pw.DateTimeField(null=True)
    expires_at = pw.DateTimeField(null=True)
    revoked_at = pw.DateTimeField(null=True)


class Customer(BaseModel):
    project = pw.ForeignKeyField(Project, backref="customers", on_delete="CASCADE")
    external_user_id = ExactCharField(max_length=255)  # the tenant's opaque id
    email = pw.CharField(max_length=254, default="")
    stripe_customer_id = ExactCharField(max_length=255, null=True)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = (
            (("project", "external_user_id"), True),
            (("project", "stripe_customer_id"), False),
            (("project", "email"), False),
        )


class Subscription(BaseModel):
    project = pw.ForeignKeyField(Project, backref="subscriptions", on_delete="CASCADE")
    customer = pw.ForeignKeyField(Customer, backref="subscriptions", on_delete="CASCADE")
    stripe_subscription_id = ExactCharField(max_length=255)
    plan_slug = pw.CharField(max_length=100, default="")
    stripe_price_id = pw.CharField(max_length=255, default="")
    interval = pw.CharField(max_length=20, default="monthly")  # daily|weekly|monthly|yearly, "" unknown
    stripe_status = pw.CharField(max_length=32)  # Stripe's own word
    status = pw.CharField(max_length=32, choices=[(s.value, s.value) for s in Status])  # ours, SPEC 3.3
    # The plan item (SPEC 3.3): its price's interval_count, its quantity (seats), unit amount (minor
    # units) and currency, for MRR (unit_amount x quantity normalised to a month).
    interval_count = pw.IntegerField(null=True)
    quantity = pw.IntegerField(null=True)
    unit_amount = pw.BigIntegerField(null=True)
    currency = pw.CharField(max_length=3, null=True)
    # Stripe's pause_collection ({behavior, resumes_at}); null when collection is not paused.
    pause_behavior = pw.CharField(max_length=32, null=True)
    pause_resumes_at = pw.DateTimeField(null=True)
    # plan_slug without the catalog (price lookup_key or still-valid checkout metadata): what plan_slug
    # falls back to when the catalog drops the price.
    plan_slug_fallback = pw.CharField(max_length=100, null=True)
    cancel_at_period_end = pw.BooleanField(default=False)
    current_period_end = pw.DateTimeField(null=True)
    cancel_at = pw.DateTimeField(null=True)
    canceled_at = pw.DateTimeField(null=True)
    trial_end = pw.DateTimeField(null=True)
    started_at = pw.DateTimeField(null=True)  # Stripe's `created`
    # Milliseconds since the epoch of the stored snapshot (event `created` x 1000, or the start of
    # the Stripe fetch it came from): an older snapshot never overwrites a newer one.
    snapshot_at = pw.BigIntegerField(default=0)
    synced_at = pw.DateTimeField(default=utcnow)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = (
            (("project", "stripe_subscription_id"), True),
            (("customer", "status"), False),
            (("project", "status"), False),
            (("project", "started_at"), False),
            (("project", "stripe_price_id"), False),  # the catalog's bulk updates (pulse.plans)
        )


class StripeCustomerHistory(BaseModel):
    """A Stripe customer id a Customer no longer uses (deleted in Stripe, or unknown to it), never re-linked."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    customer = pw.ForeignKeyField(Customer, backref="stripe_history", on_delete="CASCADE")
    stripe_customer_id = ExactCharField(max_length=255)
    reason = pw.CharField(max_length=100)  # e.g. "deleted in Stripe"
    ended_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "stripe_customer_id"), True),)


class Plan(BaseModel):
    """The plan catalog (SPEC 3.2): a tenant's plan_slug and the Stripe prices that sell it."""

    project = pw.ForeignKeyField(Project, backref="plans", on_delete="CASCADE")
    plan_slug = ExactCharField(max_length=100)
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "plan_slug"), True),)


class PlanPrice(BaseModel):
    """One Stripe price of a plan; unique per project, so a price belongs to at most one plan."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    plan = pw.ForeignKeyField(Plan, backref="prices", on_delete="CASCADE")
    stripe_price_id = ExactCharField(max_length=255)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "stripe_price_id"), True),)


class WebhookEvent(BaseModel):
    project = pw.ForeignKeyField(Project, backref="webhook_events", null=True, on_delete="CASCADE")
    stripe_event_id = ExactCharField(max_length=255, null=True)
    type = pw.CharField(max_length=100, default="")
    api_version = pw.CharField(max_length=40, null=True)
    livemode = pw.BooleanField(default=False)
    object_id = ExactCharField(max_length=255, null=True)  # the event's data.object id
    stripe_customer_id = ExactCharField(max_length=255, null=True)
    stripe_created = pw.BigIntegerField(null=True)
    received_at = pw.DateTimeField(default=utcnow)
    processed_at = pw.DateTimeField(null=True)
    outcome = pw.CharField(max_length=20, default=Outcome.RECEIVED)  # an Outcome
    error = pw.TextField(null=True)
    reason = pw.CharField(max_length=255, null=True)  # why an `ignored` event changed nothing
    attempts = pw.IntegerField(default=1)
    remote_ip = pw.CharField(max_length=64, null=True)
    payload = LongTextField(null=True)
    retry_at = pw.DateTimeField(null=True)  # a failed event the inbox worker retries then (pulse.inbox)

    class Meta:
        indexes = (
            (("project", "stripe_event_id"), True),
            (("project", "received_at"), False),
            (("project", "outcome"), False),
            (("project", "stripe_customer_id"), False),
            (("outcome", "retry_at"), False),
        )


class AuditLog(BaseModel):
    project = pw.ForeignKeyField(Project, backref="audit", null=True, on_delete="CASCADE")
    user = pw.ForeignKeyField(User, null=True, on_delete="SET NULL")
    actor = pw.CharField(max_length=254)  # email, "cli" or "api-key:<prefix>"
    action = pw.CharField(max_length=64)
    detail = pw.TextField(default="")
    ip = pw.CharField(max_length=64, null=True)
    created_at = pw.DateTimeField(default=utcnow, index=True)


class Session(BaseModel):
    token_hash = pw.CharField(max_length=64, unique=True)
    user = pw.ForeignKeyField(User, backref="sessions", on_delete="CASCADE")
    created_at = pw.DateTimeField(default=utcnow)
    last_seen_at = pw.DateTimeField(default=utcnow)
    expires_at = pw.DateTimeField()
    ip = pw.CharField(max_length=64, null=True)
    user_agent = pw.CharField(max_length=255, default="")


class IdempotencyRecord(BaseModel):
    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    key = ExactCharField(max_length=255)  # clients' Idempotency-Key: case matters
    request_hash = pw.CharField(max_length=64)
    status_code = pw.IntegerField(null=True)  # null while the first request is in flight
    response_body = LongTextField(null=True)
    created_at = pw.DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("project", "key"), True),)


class CheckoutLease(BaseModel):
    """One checkout at a time per user (pulse.checkout): the holder's token and when its hold lapses."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    external_user_id = ExactCharField(max_length=255)
    token = pw.CharField(max_length=32)
    expires_at = pw.DateTimeField()

    class Meta:
        indexes = ((("project", "external_user_id"), True),)


class LoginFailure(BaseModel):
    email = pw.CharField(max_length=254)
    ip = pw.CharField(max_length=64)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("email", "ip", "created_at"), False),)


class SandboxState(BaseModel):
    """A sandbox project's simulated Stripe account (sandbox/core.py state as JSON), one row per project."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE", unique=True)
    state = LongTextField()
    version = pw.IntegerField(default=1)  # optimistic lock: a save names the version it read
    updated_at = pw.DateTimeField(default=utcnow)


class CustomerState(BaseModel):
    """What the tenant's app was last told about a customer, and the customer's Stripe entitlements."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    customer = pw.ForeignKeyField(Customer, unique=True, on_delete="CASCADE")
    answer = LongTextField(null=True)  # GET /api/subscription's JSON as last announced (null: no subscription)
    features = pw.TextField(default="[]")  # lookup keys of Stripe's active entitlements (JSON list)
    features_at = pw.BigIntegerField(default=0)  # ms; a newer one wins, like Subscription.snapshot_at
    updated_at = pw.DateTimeField(default=utcnow)


class CustomerFeature(BaseModel):
    """One active Stripe entitlement (feature lookup_key) of a customer: the fast access check's index."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    customer = pw.ForeignKeyField(Customer, on_delete="CASCADE")
    lookup_key = ExactCharField(max_length=255)

    class Meta:
        indexes = ((("customer", "lookup_key"), True),)


class WebhookEndpoint(BaseModel):
    """A URL of the tenant's app that receives our outgoing webhooks (Standard Webhooks signed)."""

    public_id = pw.CharField(max_length=40, unique=True)
    project = pw.ForeignKeyField(Project, backref="webhook_endpoints", on_delete="CASCADE")
    url = pw.CharField(max_length=2048)
    description = pw.CharField(max_length=200, default="")
    enabled_events = pw.CharField(max_length=255, default='["*"]')  # JSON: event types it receives, or ["*"]
    secret = pw.TextField()  # Fernet token of the whsec_ secret, see pulse.security
    enabled = pw.BooleanField(default=True)
    disabled_reason = pw.CharField(max_length=255, null=True)
    failing_since = pw.BigIntegerField(null=True)  # ms of the first failure since the last success
    created_at = pw.DateTimeField(default=utcnow)
    updated_at = pw.DateTimeField(default=utcnow)


class WebhookMessage(BaseModel):
    """One outgoing event (the outbox): written in the transaction of the change it announces."""

    public_id = pw.CharField(max_length=40, unique=True)  # the webhook-id header
    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    event_type = pw.CharField(max_length=64)
    payload = LongTextField()  # the exact JSON body that is signed and sent
    created_ms = pw.BigIntegerField()
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("project", "created_ms"), False),)


class WebhookDelivery(BaseModel):
    """A message to one endpoint: pending until a 2xx, retried with backoff, claimed under a lease."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    message = pw.ForeignKeyField(WebhookMessage, backref="deliveries", on_delete="CASCADE")
    endpoint = pw.ForeignKeyField(WebhookEndpoint, backref="deliveries", on_delete="CASCADE")
    order_key = pw.CharField(max_length=64)  # messages with one key reach an endpoint in order
    status = pw.CharField(max_length=16, default="pending")  # pending | succeeded | failed
    attempts = pw.IntegerField(default=0)
    next_attempt_ms = pw.BigIntegerField(default=0)
    lease_until_ms = pw.BigIntegerField(default=0)
    lease_owner = pw.CharField(max_length=40, null=True)
    last_status_code = pw.IntegerField(null=True)
    last_latency_ms = pw.IntegerField(null=True)
    last_error = pw.CharField(max_length=255, null=True)
    last_attempt_at = pw.DateTimeField(null=True)
    delivered_at = pw.DateTimeField(null=True)
    created_at = pw.DateTimeField(default=utcnow)

    class Meta:
        indexes = (
            (("status", "next_attempt_ms"), False),
            (("endpoint", "order_key", "status"), False),
            (("endpoint", "id"), False),
        )


class OutboxFanout(BaseModel):
    """A customer a bulk change may have moved, announced later by the delivery loop (pulse.fanout)."""

    project = pw.ForeignKeyField(Project, on_delete="CASCADE")
    customer = pw.ForeignKeyField(Customer, on_delete="CASCADE")


class ReadModelChange(BaseModel):
    """A committed change to what GET /api/subscription answers; rows come from triggers (pulse.changefeed)."""

    id = pw.BigAutoField()
    project_id = pw.IntegerField()  # no foreign keys: a row must outlive the deletion it reports
    customer_id = pw.IntegerField(null=True)
    external_user_id = ExactCharField(max_length=255, null=True)  # null: every user of the customer / project
    created_at = pw.DateTimeField(constraints=[pw.SQL("DEFAULT CURRENT_TIMESTAMP")], index=True)


MODELS = [
    Project,
    User,
    Membership,
    ApiKey,
    Customer,
    Subscription,
    WebhookEvent,
    AuditLog,
    Session,
    IdempotencyRecord,
    LoginFailure,
    StripeCustomerHistory,
    Plan,
    PlanPrice,
    CheckoutLease,
    SandboxState,
    CustomerState,
    CustomerFeature,
    WebhookEndpoint,
    WebhookMessage,
    WebhookDelivery,
    ReadModelChange,
    OutboxFanout,
]
