"""POST /api/checkout, POST /api/portal and GET /api/subscription (SPEC 3.2)."""

import re
from urllib.parse import urlsplit

from handlers.base import ApiError, ApiHandler, idempotent, invalid, missing
from pulse import billing, emails, hotpath, plans
from pulse import subscriptions as subs
from pulse.checkout import AlreadySubscribed, CheckoutBusy, CheckoutRequest, start_checkout
from pulse.db import block, transaction

# Control characters (\x00-\x1f, \x7f-\x9f) are never part of an address or URL; the OpenAPI
# document states the same patterns (emails: pulse.emails), so the fuzzer and the server agree.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
INTERVALS = ("monthly", "yearly")
_DELETED_CUSTOMER = (
    "This user's Stripe customer no longer exists in Stripe (deleted, or not in this Stripe "
    "account and mode); a new checkout (POST /api/checkout) creates a new one."
)
MAX_URL = 2048
# A product id where the price belongs is the usual mix-up; any other id may be a price or a legacy
# plan id (plan_… or a custom one), and Stripe says whether it exists (StripeRefused on our field).
_NOT_A_PRICE = re.compile(r"prod_")
CHECKOUT_FIELDS = (
    "external_user_id",
    "email",
    "plan_slug",
    "stripe_price_id",
    "success_url",
    "cancel_url",
    "interval",
    "trial_days",
)
PORTAL_FIELDS = ("external_user_id", "return_url")


# ---------------------------------------------------------------- validation


def _required(data, field):
    value = data.get(field)
    if value is None:
        raise missing(field)
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string")
    return value


def external_user_id(value, field="external_user_id"):
    """1-255 characters, matched exactly: control characters are refused, never rewritten (review M4)."""
    if not 1 <= len(value) <= 255:
        raise invalid(field, f"{field} must be 1-255 characters")
    if _CONTROL.search(value):
        raise invalid(field, f"{field} must not contain control characters")
    return value


def email(data, field="email"):
    value = _required(data, field).strip()
    if not emails.is_valid(value):
        raise invalid(field, f"{field} must be a valid email address")
    return value


def url(data, field):
    value = _required(data, field)
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError:  # e.g. "http://[" (an unclosed IPv6 literal)
        parts, hostname = None, None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not hostname
        or len(value) > MAX_URL
        or any(ch.isspace() for ch in value)
        or _CONTROL.search(value)
    ):
        raise invalid(field, f"{field} must be an absolute http(s) URL")
    return value


def stripe_price_id(value, field="stripe_price_id"):
    """A price id (price_…) or a legacy plan id (plan_… or the custom id it was given); Stripe says if it exists."""
    if (
        not 1 <= len(value) <= 255
        or value == "price_"
        or value == "plan_"
        or _NOT_A_PRICE.match(value)
        or any(ch.isspace() for ch in value)
        or _CONTROL.search(value)
    ):
        raise invalid(field, f"{field} must be a Stripe price id (price_…) or plan id")
    return value


def checkout_request(data):
    """The validated CheckoutRequest of a POST /api/checkout body, fields checked in this order."""
    user = external_user_id(_required(data, "external_user_id"))
    address = email(data)
    plan_slug = _required(data, "plan_slug")
    if not 1 <= len(plan_slug) <= 100:
        raise invalid("plan_slug", "plan_slug must be 1-100 characters")
    price_id = stripe_price_id(_required(data, "stripe_price_id"))
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
    return CheckoutRequest(
        external_user_id=user,
        email=address,
        plan_slug=plan_slug,
        price_id=price_id,
        success_url=success_url,
        cancel_url=cancel_url,
        interval=interval,
        trial_days=trial_days,
    )


# ---------------------------------------------------------------- handlers


class BillingHandler(ApiHandler):
    """Maps the domain's billing exceptions onto the API's errors (SPEC 3.1)."""

    def stripe_client(self):
        return billing.project_client(self.project, self.settings["secret_box"], self.config)

    def _handle_request_exception(self, exc):
        if isinstance(exc, billing.StripeNotConfigured):
            exc = ApiError(
                503,
                "stripe_not_configured",
                "Stripe is not configured for this project: set its secret key in the console (Settings) "
                "or with `run.py set-stripe <project_id>`, or set PULSE_STRIPE_SECRET_KEY "
                "for the whole deployment.",
            )
        elif isinstance(exc, billing.StripeRefused):
            exc = ApiError(
                400, "invalid_field", exc.message, field=exc.field, extra={"stripe_request_id": exc.request_id}
            )
        elif isinstance(exc, plans.PlanConflict):
            exc = invalid(exc.field, exc.message)
        elif isinstance(exc, billing.StripeFailure):
            suffix = f" (Stripe request {exc.request_id})" if exc.request_id else ""
            exc = ApiError(
                502, "stripe_error", f"Stripe error: {exc.message}{suffix}", extra={"stripe_request_id": exc.request_id}
            )
        elif isinstance(exc, AlreadySubscribed):
            exc = ApiError(
                409,
                "already_subscribed",
                "This user already has a subscription with access; "
                "send them to the customer portal (POST /api/portal) to change it.",
            )
        elif isinstance(exc, CheckoutBusy):
            exc = ApiError(
                409,
                "checkout_in_progress",
                "Another checkout for this user is still being opened; retry shortly.",
                headers={"Retry-After": "1"},
            )
        super()._handle_request_exception(exc)


class CheckoutHandler(BillingHandler):
    @idempotent
    async def post(self):
        request = checkout_request(self.json_body(allowed=CHECKOUT_FIELDS))
        session = await start_checkout(
            self.project,
            self.settings["secret_box"],
            self.config,
            request,
            client_key=self.request.headers.get("Idempotency-Key"),
        )
        self.write_json({"url": session.url, "session_id": session.session_id})


class PortalHandler(BillingHandler):
    @idempotent
    async def post(self):
        data = self.json_body(allowed=PORTAL_FIELDS)
        user = external_user_id(_required(data, "external_user_id"))
        return_url = url(data, "return_url")
        client = self.stripe_client()
        with block():
            customer = billing.find_customer(self.project, user)
            gone = customer is not None and not customer.stripe_customer_id and subs.previous_stripe_customers(customer)
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
                with transaction():
                    subs.retire_stripe_customer(
                        self.project,
                        customer.stripe_customer_id,
                        subs.UNKNOWN_TO_STRIPE,
                        subs.clock_ms(),
                        end_subscriptions=False,
                    )
            raise ApiError(404, "not_found", _DELETED_CUSTOMER) from None
        self.write_json({"url": portal_url})


class SubscriptionHandler(ApiHandler):
    def get(self):
        user = self.query_arg("external_user_id")
        if user is None:
            raise missing("external_user_id")
        external_user_id(user)
        found, body = hotpath.answer(self.project.id, user)  # its own db block, when it needs one
        if body is None:
            raise ApiError(
                404,
                "not_found",
                "No subscription for this external_user_id." if found else "No customer with this external_user_id.",
            )
        self.finish(body)  # the JSON, encoded once per change (pulse.hotpath)


default_handlers = [
    (r"/api/checkout", CheckoutHandler),
    (r"/api/portal", PortalHandler),
    (r"/api/subscription", SubscriptionHandler),
]
