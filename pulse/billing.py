"""The Stripe gateway: async StripeClients per secret key, one Stripe customer per user, sessions."""

import asyncio
import hashlib
import json
import logging
import re
import weakref
from dataclasses import dataclass

import peewee
import stripe

from pulse import projects
from pulse.db import block, database, utcnow
from pulse.models import Customer, Project, Subscription
from pulse.status import access_condition

log = logging.getLogger("pulse.billing")

# Clients per event loop: an httpx connection pool belongs to the loop that opened it.
_CLIENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
CLIENT_REFERENCE_MAX = 200  # Stripe's limit for client_reference_id
_SECRETISH = re.compile(r"\b([sr]k_(?:live|test)_)[A-Za-z0-9*]+")


class StripeNotConfigured(Exception):
    """Neither the project nor the deployment has a Stripe secret key (API: 503)."""


class StripeFailure(Exception):
    """Stripe refused or could not be reached (API: 502 stripe_error); carries Stripe's message and request id."""

    def __init__(self, message, request_id=None, http_status=None, code=None, param=None):
        super().__init__(message)
        self.message, self.request_id, self.http_status, self.code = message, request_id, http_status, code
        self.param = param

    @property
    def missing_customer(self):
        """Stripe no longer knows the customer we stored (deleted, or the project switched accounts or modes)."""
        return self.code == "resource_missing" and self.param in ("customer", "id")


@dataclass(frozen=True)
class Checkout:
    url: str
    session_id: str


class HTTPXClient(stripe.HTTPXClient):
    """stripe's httpx client, sending the form body as `content=` (httpx deprecates raw `data=`)."""

    def _get_request_args_kwargs(self, method, url, headers, post_data):
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.pop("data", None)
        if data:
            kwargs["content"] = data
        return args, kwargs


def _digest(*parts):
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def customer_idempotency_key(project_public_id, external_user_id, replacing=None):
    """The same Stripe idempotency key for every attempt to create this user's customer, in any process."""
    key = f"pulse-cus-{project_public_id}-{_digest(external_user_id)}"
    return f"{key}-r{_digest(replacing)[:16]}" if replacing else key


def secret_key_for(project, box, config):
    """The project's Stripe key, else the deployment-wide one; raises StripeNotConfigured."""
    key = projects.stripe_secret_key(project, box, default=config.stripe_secret_key)
    if not key:
        raise StripeNotConfigured()
    return key


def api_base_for(config, secret_key):
    """Where calls with `secret_key` go (SPEC 8): a sandbox key only ever to this server's simulator, for
    its one project; every other key only ever to PULSE_STRIPE_API_BASE, whatever that names."""
    project_id = projects.sandbox_project_of(secret_key)
    return f"{projects.local_base(config)}/sandbox/{project_id}" if project_id else config.stripe_api_base


def client_for(config, secret_key):
    """The cached async StripeClient for this key and settings on the running loop."""
    per_loop = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    api_base = api_base_for(config, secret_key)
    slot = (secret_key, api_base, config.stripe_timeout, config.stripe_max_retries)
    client = per_loop.get(slot)
    if client is None:
        http = HTTPXClient(timeout=config.stripe_timeout)
        client = stripe.StripeClient(secret_key, base_addresses={"api": api_base},
                                     max_network_retries=config.stripe_max_retries, http_client=http)
        client._pulse_http = http
        per_loop[slot] = client
    return client


def project_client(project, box, config):
    """The StripeClient for `project` (its own key, else the deployment's)."""
    return client_for(config, secret_key_for(project, box, config))


async def close_clients():
    """Close the HTTP pools of this loop's clients (shutdown, tests)."""
    per_loop = _CLIENTS.pop(asyncio.get_running_loop(), {})
    for client in per_loop.values():
        await client._pulse_http.close_async()


def _scrub(text):
    return _SECRETISH.sub(lambda m: m.group(1) + "…", text or "")


async def call(method, *args, **kwargs):
    """Await a StripeClient *_async method, turning Stripe errors into StripeFailure."""
    try:
        return await method(*args, **kwargs)
    except stripe.StripeError as exc:
        message = _scrub(exc.user_message) or "Stripe request failed."
        if isinstance(exc, stripe.APIConnectionError):
            message = "Could not reach Stripe (network error or timeout)."
        log.warning("stripe %s: %s (request %s)", type(exc).__name__, message, exc.request_id)
        param = getattr(exc, "param", None) or getattr(exc.error, "param", None)
        raise StripeFailure(message, exc.request_id, exc.http_status, exc.code, param) from None


# ---------------------------------------------------------------- customers (call DB parts inside a db block)


def has_access_subscription(customer, project):
    """True when `customer` holds a subscription that grants access under the project's policy."""
    # The policy is read in the same query: `project` may come from the API-key cache.
    return (Subscription.select()
            .join(Project, on=(Project.id == Subscription.project))
            .where((Subscription.customer == customer) & (Subscription.project == project.id)
                   & access_condition(Subscription, Project))
            .exists())


def find_customer(project, external_user_id):
    return Customer.get_or_none((Customer.project == project) & (Customer.external_user_id == external_user_id))


def claim_customer(project, external_user_id, email):
    """The Customer row for this user, inserting it if new; concurrent claimers all get the one row."""
    found = find_customer(project, external_user_id)
    if found is not None:
        return found
    try:
        with database.atomic():
            return Customer.create(project=project, external_user_id=external_user_id, email=email)
    except peewee.IntegrityError:
        found = find_customer(project, external_user_id)
        if found is None:
            raise
        return found


def store_stripe_customer(customer, stripe_customer_id):
    """Record the Stripe customer id once (all racers carry the same id, thanks to the idempotency key)."""
    updated = (Customer.update(stripe_customer_id=stripe_customer_id, updated_at=utcnow())
               .where((Customer.id == customer.id) & Customer.stripe_customer_id.is_null()).execute())
    if not updated:  # someone stored it first: keep theirs
        stripe_customer_id = Customer.get_by_id(customer.id).stripe_customer_id
    customer.stripe_customer_id = stripe_customer_id


def forget_stripe_customer(customer):
    """Drop a Stripe customer id Stripe no longer knows, unless another request already replaced it."""
    stale = customer.stripe_customer_id
    updated = (Customer.update(stripe_customer_id=None, updated_at=utcnow())
               .where((Customer.id == customer.id) & (Customer.stripe_customer_id == stale)).execute())
    customer.stripe_customer_id = None if updated else Customer.get_by_id(customer.id).stripe_customer_id


def store_email(customer, email):
    Customer.update(email=email, updated_at=utcnow()).where(Customer.id == customer.id).execute()
    customer.email = email


# ---------------------------------------------------------------- Stripe calls (never inside a db block)


async def create_stripe_customer(client, project, customer, replacing=None):
    """Create the Stripe customer for a claimed row; identical params and key from every process."""
    key = customer_idempotency_key(project.public_id, customer.external_user_id, replacing)
    created = await call(client.v1.customers.create_async, params={
        "email": customer.email,
        "metadata": {"pulse_project_id": project.public_id, "external_user_id": customer.external_user_id},
    }, options={"idempotency_key": key})
    return created.id


async def ensure_stripe_customer(client, project, customer, email, replacing=None):
    """Give the claimed row its one Stripe customer, with `email`; no db block spans an await."""
    if not customer.stripe_customer_id:
        stripe_id = await create_stripe_customer(client, project, customer, replacing)
        with block():
            store_stripe_customer(customer, stripe_id)
    if customer.email != email:
        await update_stripe_email(client, customer.stripe_customer_id, email)
        with block():
            store_email(customer, email)


async def update_stripe_email(client, stripe_customer_id, email):
    await call(client.v1.customers.update_async, stripe_customer_id, params={"email": email})


async def create_checkout(client, project, customer, *, plan_slug, price_id, interval, success_url, cancel_url,
                          trial_days=None, idempotency_key=None):
    """A subscription-mode Checkout Session for the customer, with PaymentPulse metadata on both levels."""
    # stripe_price_id: plan_slug holds only while the subscription is still on this price (SPEC 3.3).
    metadata = {"pulse_project_id": project.public_id, "external_user_id": customer.external_user_id,
                "plan_slug": plan_slug, "interval": interval, "stripe_price_id": price_id}
    subscription_data = {"metadata": metadata}
    if trial_days:
        subscription_data["trial_period_days"] = trial_days
    options = {"idempotency_key": idempotency_key} if idempotency_key else {}
    params = {
        "mode": "subscription", "customer": customer.stripe_customer_id,
        "line_items": [{"price": price_id, "quantity": 1}],
        "success_url": success_url, "cancel_url": cancel_url,
        "metadata": metadata, "subscription_data": subscription_data,
    }
    if len(customer.external_user_id) <= CLIENT_REFERENCE_MAX:
        params["client_reference_id"] = customer.external_user_id  # longer ids travel in the metadata only
    session = await call(client.v1.checkout.sessions.create_async, params=params, options=options)
    return Checkout(url=session.url, session_id=session.id)


async def create_portal(client, stripe_customer_id, return_url):
    """A Customer Portal session URL."""
    session = await call(client.v1.billing_portal.sessions.create_async,
                         params={"customer": stripe_customer_id, "return_url": return_url})
    return session.url


def plain(obj):
    """A StripeObject as the plain JSON dict Stripe sent (StripeObject.to_dict is deprecated and shallow)."""
    response = getattr(obj, "last_response", None)
    return response.data if response is not None else json.loads(str(obj))


async def retrieve_subscription(client, subscription_id):
    """Stripe's current subscription object (as a plain dict), for sync and webhooks."""
    return plain(await call(client.v1.subscriptions.retrieve_async, subscription_id))


async def list_subscriptions(client, stripe_customer_id):
    """Every subscription of a Stripe customer, any status, as plain dicts (follows pagination)."""
    found, after = [], None
    while True:
        params = {"customer": stripe_customer_id, "status": "all", "limit": 100}
        if after:
            params["starting_after"] = after
        listing = plain(await call(client.v1.subscriptions.list_async, params=params))
        found.extend(listing["data"])
        if not listing["has_more"] or not listing["data"]:
            return found
        after = listing["data"][-1]["id"]


async def check_connection(client):
    """The Stripe account the key belongs to ({"id", "name"}), or StripeFailure."""
    account = plain(await call(client.v1.accounts.retrieve_current_async))
    profile = account.get("business_profile") or {}
    settings = (account.get("settings") or {}).get("dashboard") or {}
    return {"id": account["id"], "name": profile.get("name") or settings.get("display_name")}
