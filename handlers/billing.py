"""POST /api/checkout, POST /api/portal and GET /api/subscription (SPEC 3.2)."""

import hashlib
import json
import re
from urllib.parse import urlsplit

from pulse import billing, hotpath, plans, subscriptions as subs
from pulse.db import block

from handlers.base import ApiError, ApiHandler, invalid, missing

# Control characters (\x00-\x1f, \x7f-\x9f) are never part of an address or URL; the OpenAPI
# document states the same patterns, so the fuzzer and the server agree on what is valid.
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+\.[^@\s.\x00-\x1f\x7f-\x9f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
INTERVALS = ("monthly", "yearly")
_DELETED_CUSTOMER = ("This user's Stripe customer no longer exists in Stripe (deleted, or not in this Stripe "
                     "account and mode); a new checkout (POST /api/checkout) creates a new one.")
MAX_URL = 2048


# ---------------------------------------------------------------- validation


def _required(data, field):
    value = data.get(field)
    if value is None:
        raise missing(field)
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string")
    return value


def external_user_id(value, field="external_user_id"):
    if not 1 <= len(value) <= 255:
        raise invalid(field, f"{field} must be 1-255 characters")
    return value


def email(data, field="email"):
    value = _required(data, field).strip()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise invalid(field, f"{field} must be a valid email address")
    return value


def url(data, field):
    value = _required(data, field)
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError:  # e.g. "http://[" (an unclosed IPv6 literal)
        parts, hostname = None, None
    if (parts is None or parts.scheme not in ("http", "https") or not hostname or len(value) > MAX_URL
            or any(ch.isspace() for ch in value) or _CONTROL.search(value)):
        raise invalid(field, f"{field} must be an absolute http(s) URL")
    return value


def checkout_request(data):
    """The validated fields of a POST /api/checkout body, in the order they are checked."""
    user = external_user_id(_required(data, "external_user_id"))
    address = email(data)
    plan_slug = _required(data, "plan_slug")
    if not 1 <= len(plan_slug) <= 100:
        raise invalid("plan_slug", "plan_slug must be 1-100 characters")
    price_id = _required(data, "stripe_price_id")
    if not price_id.startswith("price_") or len(price_id) <= len("price_") or len(price_id) > 255:
        raise invalid("stripe_price_id", "stripe_price_id must be a Stripe price id (price_…)")
    success_url, cancel_url = url(data, "success_url"), url(data, "cancel_url")
    interval = data.get("interval")
    if interval is None:
        interval = "monthly"
    elif interval not in INTERVALS:
        raise invalid("interval", "interval must be monthly or yearly")
    trial_days = data.get("trial_days")
    if isinstance(trial_days, float) and trial_days.is_integer():
        trial_days = int(trial_days)  # JSON has one number type: 14.0 is the integer 14
    if trial_days is not None:
        if isinstance(trial_days, bool) or not isinstance(trial_days, int):
            raise invalid("trial_days", "trial_days must be an integer")
        if not 1 <= trial_days <= 730:
            raise invalid("trial_days", "trial_days must be between 1 and 730")
    return dict(external_user_id=user, email=address, plan_slug=plan_slug, price_id=price_id,
                success_url=success_url, cancel_url=cancel_url, interval=interval, trial_days=trial_days)


# ---------------------------------------------------------------- handlers


class BillingHandler(ApiHandler):
    """Maps the gateway's exceptions onto the API's 502/503 errors."""

    def stripe_client(self):
        return billing.project_client(self.project, self.settings["secret_box"], self.config)

    def _handle_request_exception(self, exc):
        if isinstance(exc, billing.StripeNotConfigured):
            exc = ApiError(503, "stripe_not_configured",
                           "Stripe is not configured for this project (no secret key in the project or deployment).")
        elif isinstance(exc, plans.PlanConflict):
            exc = invalid(exc.field, exc.message)
        elif isinstance(exc, billing.StripeFailure):
            suffix = f" (Stripe request {exc.request_id})" if exc.request_id else ""
            exc = ApiError(502, "stripe_error", f"Stripe error: {exc.message}{suffix}",
                           extra={"stripe_request_id": exc.request_id})
        super()._handle_request_exception(exc)


class CheckoutHandler(BillingHandler):
    async def post(self):
        fields = checkout_request(self.json_body())
        client = self.stripe_client()
        project, user, address = self.project, fields["external_user_id"], fields["email"]
        with block():
            plans.check_pair(project, fields["price_id"], fields["plan_slug"])  # 400 before any Stripe call
            customer = billing.find_customer(project, user)
            if customer is not None and billing.has_access_subscription(customer, project):
                raise ApiError(409, "already_subscribed", "This user already has a subscription with access; "
                               "send them to the customer portal (POST /api/portal) to change it.")
            if customer is None:
                customer = billing.claim_customer(project, user, address)
        replacing = None
        while True:
            try:
                # Concurrent requests for a new user all send the same key and params: Stripe makes one customer.
                await billing.ensure_stripe_customer(client, project, customer, address, replacing)
                session = await billing.create_checkout(
                    client, project, customer, plan_slug=fields["plan_slug"], price_id=fields["price_id"],
                    interval=fields["interval"], success_url=fields["success_url"],
                    cancel_url=fields["cancel_url"], trial_days=fields["trial_days"],
                    idempotency_key=self._checkout_key(fields, customer))
                break
            except billing.StripeFailure as exc:
                if replacing or not exc.missing_customer or not customer.stripe_customer_id:
                    raise
                # Deleted in Stripe, or the project moved to another account or to live mode: make a new one, once.
                replacing = customer.stripe_customer_id
                with block():
                    billing.forget_stripe_customer(customer)
        with block():
            plans.learn_pair(project, fields["price_id"], fields["plan_slug"])  # only once Stripe accepted the price
        self.write_json({"url": session.url, "session_id": session.session_id})

    def _checkout_key(self, fields, customer):
        """With a client Idempotency-Key, retries of the same request reach Stripe with the same key."""
        given = self.request.headers.get("Idempotency-Key")
        if not given:
            return None  # stripe-python still sends one random key, reused across its own retries
        payload = json.dumps([given, fields, customer.stripe_customer_id], sort_keys=True)
        return f"pulse-cs-{self.project.public_id}-{hashlib.sha256(payload.encode()).hexdigest()[:32]}"


class PortalHandler(BillingHandler):
    async def post(self):
        data = self.json_body()
        user = external_user_id(_required(data, "external_user_id"))
        return_url = url(data, "return_url")
        client = self.stripe_client()
        with block():
            customer = billing.find_customer(self.project, user)
            gone = customer is not None and not customer.stripe_customer_id and subs.previous_stripe_customers(
                customer)
        if gone:
            raise ApiError(404, "not_found", _DELETED_CUSTOMER)
        if customer is None or not customer.stripe_customer_id:
            raise ApiError(404, "not_found", "No Stripe customer for this external_user_id in this project.")
        try:
            portal_url = await billing.create_portal(client, customer.stripe_customer_id, return_url)
        except billing.StripeFailure as exc:
            if not exc.missing_customer:
                raise
            # Deleted in Stripe before its customer.deleted event arrived (or the key moved to another
            # account or mode): a 502 would look like an outage to the app and stay forever.
            with block():
                with subs.transaction():
                    subs.retire_stripe_customer(self.project, customer.stripe_customer_id, subs.UNKNOWN_TO_STRIPE,
                                                subs.clock_ms(), end_subscriptions=False)
            raise ApiError(404, "not_found", _DELETED_CUSTOMER) from None
        self.write_json({"url": portal_url})


class SubscriptionHandler(ApiHandler):
    def get(self):
        user = self.get_query_argument("external_user_id", None, strip=False)
        if user is None:
            raise missing("external_user_id")
        external_user_id(user)
        found, body = hotpath.answer(self.project.id, user)  # its own db block, when it needs one
        if body is None:
            raise ApiError(404, "not_found", "No subscription for this external_user_id." if found
                           else "No customer with this external_user_id.")
        self.finish(body)  # the JSON, encoded once per change (pulse.hotpath)


default_handlers = [
    (r"/api/checkout", CheckoutHandler),
    (r"/api/portal", PortalHandler),
    (r"/api/subscription", SubscriptionHandler),
]
