"""The Stripe gateway: async StripeClients per secret key, customers, Checkout and portal sessions."""

import asyncio
import hashlib
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast

import stripe

from pulse import projects
from pulse.config import Config
from pulse.models import Customer, Project, Subscription
from pulse.security import SecretBox
from pulse.status import Policy, policy_of, row_has_access
from pulse.stripe_objects import JSON, plain

log = logging.getLogger("pulse.billing")

# Clients per event loop: an httpx connection pool belongs to the loop that opened it.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str, float, int], stripe.StripeClient]]
_CLIENTS = weakref.WeakKeyDictionary()
CLIENT_REFERENCE_MAX = 200  # Stripe's limit for client_reference_id
_SECRETISH = re.compile(r"\b([sr]k_(?:live|test)_)[A-Za-z0-9*]+")
T = TypeVar("T")


class StripeNotConfigured(Exception):
    """Neither the project nor the deployment has a Stripe secret key (API: 503)."""


class StripeFailure(Exception):
    """Stripe refused or could not be reached (API: 502 stripe_error); carries Stripe's message and request id."""

    def __init__(
        self,
        message: str,
        request_id: str | None = None,
        http_status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.request_id, self.http_status, self.code = message, request_id, http_status, code
        self.param, self.type = param, type_

    @property
    def missing_customer(self) -> bool:
        """Stripe no longer knows the customer we stored (deleted, or the project switched accounts or modes)."""
        return self.code == "resource_missing" and self.param in ("customer", "id")


class StripeRefused(StripeFailure):
    """Stripe refused a value the tenant sent (API: 400 invalid_field on `field`, with Stripe's message)."""

    def __init__(self, failure: StripeFailure, field: str) -> None:
        super().__init__(
            failure.message, failure.request_id, failure.http_status, failure.code, failure.param, failure.type
        )
        self.field = field


@dataclass(frozen=True)
class Checkout:
    """A new Checkout Session: its hosted payment page and its Stripe id (cs_...)."""

    url: str
    session_id: str


class CheckoutFields(Protocol):
    """What `create_checkout` reads of a pulse.checkout.CheckoutRequest (not imported: that module imports this one)."""

    @property
    def external_user_id(self) -> str: ...
    @property
    def plan_slug(self) -> str: ...
    @property
    def interval(self) -> str: ...
    @property
    def price_id(self) -> str: ...
    @property
    def success_url(self) -> str: ...
    @property
    def cancel_url(self) -> str: ...
    @property
    def trial_days(self) -> int | None: ...


class HTTPXClient(stripe.HTTPXClient):
    """stripe's httpx client, sending the form body as `content=` (httpx deprecates raw `data=`)."""

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> tuple[Any, dict[str, Any]]:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.pop("data", None)
        if data:
            kwargs["content"] = data
        return args, kwargs


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def customer_idempotency_key(project_public_id: str, external_user_id: str, replacing: str | None = None) -> str:
    """The same Stripe idempotency key for every attempt to create this user's customer, in any process."""
    key = f"pulse-cus-{project_public_id}-{_digest(external_user_id)}"
    return f"{key}-r{_digest(replacing)[:16]}" if replacing else key


def secret_key_for(project: Project, box: SecretBox, config: Config) -> str:
    """The project's Stripe key, else the deployment-wide one; raises StripeNotConfigured."""
    key = projects.stripe_secret_key(project, box, default=config.stripe_secret_key)
    if not key:
        raise StripeNotConfigured()
    return key


def api_base_for(config: Config, secret_key: str) -> str:
    """Where calls with `secret_key` go (SPEC 8): a sandbox key only ever to this server's simulator, for
    its one project; every other key only ever to PULSE_STRIPE_API_BASE, whatever that names."""
    project_id = projects.sandbox_project_of(secret_key)
    return f"{projects.local_base(config)}/sandbox/{project_id}" if project_id else config.stripe_api_base


def client_for(config: Config, secret_key: str) -> stripe.StripeClient:
    """The cached async StripeClient for this key and settings on the running loop."""
    per_loop = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    api_base = api_base_for(config, secret_key)
    slot = (secret_key, api_base, config.stripe_timeout, config.stripe_max_retries)
    client = per_loop.get(slot)
    if client is None:
        http = HTTPXClient(timeout=config.stripe_timeout)
        client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": api_base},
            max_network_retries=config.stripe_max_retries,
            http_client=http,
        )
        client._pulse_http = http  # type: ignore[attr-defined]  # ours: the pool close_clients() closes
        per_loop[slot] = client
    return client


def project_client(project: Project, box: SecretBox, config: Config) -> stripe.StripeClient:
    """The StripeClient for `project` (its own key, else the deployment's); raises StripeNotConfigured."""
    return client_for(config, secret_key_for(project, box, config))


async def close_clients() -> None:
    """Close the HTTP pools of this loop's clients (shutdown, tests)."""
    per_loop = _CLIENTS.pop(asyncio.get_running_loop(), {})
    for client in per_loop.values():
        await client._pulse_http.close_async()  # type: ignore[attr-defined]


def _scrub(text: str | None) -> str:
    return _SECRETISH.sub(lambda m: m.group(1) + "…", text or "")


async def call(
    method: Callable[..., Awaitable[T]], *args: Any, tenant_params: Mapping[str, str] | None = None, **kwargs: Any
) -> T:
    """Await a StripeClient *_async method, turning Stripe errors into StripeFailure.

    `tenant_params` maps Stripe's `param` names to the tenant's field names: an invalid_request_error
    on one of them is the tenant's input refused (StripeRefused), not an outage.
    """
    try:
        return await method(*args, **kwargs)
    except stripe.StripeError as exc:
        message = _scrub(exc.user_message) or "Stripe request failed."
        if isinstance(exc, stripe.APIConnectionError):
            message = "Could not reach Stripe (network error or timeout)."
        log.warning("stripe %s: %s (request %s)", type(exc).__name__, message, exc.request_id)
        # From stripe-python 15 on, exc.error is a StripeObject, not a dict: read attributes.
        param = getattr(exc, "param", None) or getattr(exc.error, "param", None)
        error_type = getattr(exc.error, "type", None)
        failure = StripeFailure(message, exc.request_id, exc.http_status, exc.code, param, error_type)
        field = (tenant_params or {}).get(param) if param else None
        if field and error_type == "invalid_request_error":
            raise StripeRefused(failure, field) from None
        raise failure from None


# ---------------------------------------------------------------- customers (call DB parts inside a db block)


def has_access_subscription(customer: Customer, project: Project) -> bool:
    """True when `customer` holds a subscription that grants access under the project's policy."""
    # The policy is read fresh: `project` may come from the API-key cache. The customer's rows are
    # found by customer alone and judged by status.row_has_access: filtered by project in SQL, SQLite
    # (no ANALYZE statistics) walked every subscription of the project through its (project_id,
    # started_at) index instead of the customer's few (issue 14: 55 % of a checkout at 100k).
    rows = list(
        Subscription.select(Subscription.status, Subscription.pause_behavior).where(Subscription.customer == customer)
    )
    if any(row_has_access(row, Policy(False, False)) for row in rows):
        return True  # access under any policy
    if not any(row_has_access(row, Policy(True, True)) for row in rows):
        return False  # access under no policy
    fresh = Project.get_by_id(project.id)
    return any(row_has_access(row, policy_of(fresh)) for row in rows)


def find_customer(project: Project, external_user_id: str) -> Customer | None:
    """The project's customer for the tenant's user id, or None. In a db block."""
    return Customer.get_or_none((Customer.project == project) & (Customer.external_user_id == external_user_id))


# ---------------------------------------------------------------- Stripe calls (never inside a db block)

# Stripe's `param` for each value the tenant sent -> the tenant's field (StripeRefused).
CUSTOMER_FIELDS = {"email": "email"}
CHECKOUT_FIELDS = {
    "line_items": "stripe_price_id",
    "line_items[0][price]": "stripe_price_id",
    "price": "stripe_price_id",
    "success_url": "success_url",
    "cancel_url": "cancel_url",
    "subscription_data[trial_period_days]": "trial_days",
    "trial_period_days": "trial_days",
    "client_reference_id": "external_user_id",
    "metadata[plan_slug]": "plan_slug",
    "subscription_data[metadata][plan_slug]": "plan_slug",
}
PORTAL_FIELDS = {"return_url": "return_url"}


async def create_stripe_customer(
    client: stripe.StripeClient,
    project: Project,
    external_user_id: str,
    email: str,
    replacing: str | None = None,
    per_email: bool = False,
) -> str:
    """Create the user's Stripe customer with `email`, under the same key from every process; returns its id.

    A refused email saves no idempotent result at Stripe, so the corrected retry goes through;
    `per_email` adds the email to the key (for a key already bound to another email at Stripe).
    """
    key = customer_idempotency_key(project.public_id, external_user_id, replacing)
    if per_email:
        key = f"{key}-e{_digest(email)[:16]}"
    created = await call(
        client.v1.customers.create_async,
        params={
            "email": email,
            "metadata": {"pulse_project_id": project.public_id, "external_user_id": external_user_id},
        },
        options={"idempotency_key": key},
        tenant_params=CUSTOMER_FIELDS,
    )
    return created.id


async def update_stripe_email(client: stripe.StripeClient, stripe_customer_id: str, email: str) -> None:
    """Set the Stripe customer's email; StripeRefused on `email` when Stripe refuses it."""
    await call(
        client.v1.customers.update_async, stripe_customer_id, params={"email": email}, tenant_params=CUSTOMER_FIELDS
    )


async def open_checkouts(client: stripe.StripeClient, stripe_customer_id: str) -> list[JSON]:
    """The customer's open subscription-mode Checkout Sessions at Stripe, as plain dicts (follows pagination)."""
    found: list[JSON] = []
    after: str | None = None
    while True:
        params = {"customer": stripe_customer_id, "status": "open", "limit": 100}
        if after:
            params["starting_after"] = after
        listing = plain(await call(client.v1.checkout.sessions.list_async, params=params))
        found.extend(s for s in listing["data"] if s.get("mode") == "subscription" and s.get("status") == "open")
        if not listing["has_more"] or not listing["data"]:
            return found
        after = listing["data"][-1]["id"]


async def expire_checkout(client: stripe.StripeClient, session_id: str) -> str | None:
    """Expire an open Checkout Session so it can no longer be paid; returns its status afterwards."""
    try:
        session = await call(
            client.v1.checkout.sessions.expire_async, session_id, options={"idempotency_key": f"pulse-cx-{session_id}"}
        )
    except StripeFailure as exc:
        if exc.type != "invalid_request_error" or exc.http_status != 400:
            raise
        # No longer open: paid ("complete") or already expired meanwhile; the caller decides.
        session = await call(client.v1.checkout.sessions.retrieve_async, session_id)
    return session.status


async def create_checkout(
    client: stripe.StripeClient,
    project: Project,
    stripe_customer_id: str,
    request: CheckoutFields,
    idempotency_key: str | None = None,
) -> Checkout:
    """A subscription-mode Checkout Session for `request` (a CheckoutRequest), PaymentPulse metadata on both levels."""
    user = request.external_user_id
    metadata = {
        "pulse_project_id": project.public_id,
        "external_user_id": user,
        "plan_slug": request.plan_slug,
        "interval": request.interval,
        # plan_slug holds only while the subscription is still on this price (SPEC 3.3).
        "stripe_price_id": request.price_id,
    }
    subscription_data: JSON = {"metadata": metadata}
    if request.trial_days:
        subscription_data["trial_period_days"] = request.trial_days
    options = {"idempotency_key": idempotency_key} if idempotency_key else {}
    params: JSON = {
        "mode": "subscription",
        "customer": stripe_customer_id,
        "line_items": [{"price": request.price_id, "quantity": 1}],
        "success_url": request.success_url,
        "cancel_url": request.cancel_url,
        "metadata": dict(metadata, pulse_checkout_key=idempotency_key) if idempotency_key else metadata,
        "subscription_data": subscription_data,
    }
    if len(user) <= CLIENT_REFERENCE_MAX:
        params["client_reference_id"] = user  # longer ids travel in the metadata only
    session = await call(
        client.v1.checkout.sessions.create_async, params=params, options=options, tenant_params=CHECKOUT_FIELDS
    )
    # Stripe types `url` optional (an expired or embedded session has none); a new hosted one always has it.
    return Checkout(url=cast(str, session.url), session_id=session.id)


async def create_portal(client: stripe.StripeClient, stripe_customer_id: str, return_url: str) -> str:
    """A Customer Portal session URL; StripeRefused on `return_url` when Stripe refuses it."""
    session = await call(
        client.v1.billing_portal.sessions.create_async,
        params={"customer": stripe_customer_id, "return_url": return_url},
        tenant_params=PORTAL_FIELDS,
    )
    return session.url


async def retrieve_subscription(client: stripe.StripeClient, subscription_id: str) -> JSON:
    """Stripe's current subscription object (as a plain dict), for sync and webhooks."""
    return plain(await call(client.v1.subscriptions.retrieve_async, subscription_id))


async def list_subscriptions(client: stripe.StripeClient, stripe_customer_id: str) -> list[JSON]:
    """Every subscription of a Stripe customer, any status, as plain dicts (follows pagination)."""
    found: list[JSON] = []
    after: str | None = None
    while True:
        params = {"customer": stripe_customer_id, "status": "all", "limit": 100}
        if after:
            params["starting_after"] = after
        listing = plain(await call(client.v1.subscriptions.list_async, params=params))
        found.extend(listing["data"])
        if not listing["has_more"] or not listing["data"]:
            return found
        after = listing["data"][-1]["id"]


async def check_connection(client: stripe.StripeClient) -> dict[str, str | None]:
    """The Stripe account the key belongs to ({"id", "name"}), or StripeFailure."""
    account = plain(await call(client.v1.accounts.retrieve_current_async))
    profile = account.get("business_profile") or {}
    settings = (account.get("settings") or {}).get("dashboard") or {}
    return {"id": account["id"], "name": profile.get("name") or settings.get("display_name")}
