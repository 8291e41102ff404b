"""Subscription lifecycle (cancel, resume, change, preview), invoices and the entitlement check (issue 16).

Parse, call pulse.lifecycle, map errors, write: the Stripe error mapping is the checkout's
(handlers.billing.BillingHandler), plus Stripe's invalid_request_error on a parameter we sent from
a caller's field -> 400 invalid_field naming that field.
"""

import re

from handlers.base import ApiError, idempotent, invalid, missing
from handlers.billing import BillingHandler, external_user_id, stripe_price_id
from pulse import entitlements, lifecycle
from pulse.db import block

_SLUG = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,100}")
_FEATURE = re.compile(r"[^\x00-\x1f\x7f-\x9f/]{1,255}")
_CURSOR = re.compile(r"in_[A-Za-z0-9]{1,250}")


def _fields(data, allowed):
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise invalid(unknown[0], f"{unknown[0]} is not a field of this request")
    for name in allowed:
        if name in data and data[name] is None:
            raise invalid(name, f"{name} must not be null (leave it out instead)")


def _user(data):
    value = data.get("external_user_id")
    if value is None:
        raise missing("external_user_id")
    if not isinstance(value, str):
        raise invalid("external_user_id", "external_user_id must be a string")
    return external_user_id(value)


def change_request(data):
    """Validated fields of a change / change preview body."""
    _fields(data, ("external_user_id", "stripe_price_id", "plan_slug", "quantity", "proration_behavior"))
    user = _user(data)
    price_id, slug = data.get("stripe_price_id"), data.get("plan_slug")
    if price_id is None and slug is None:
        raise missing("stripe_price_id")
    if price_id is not None:
        if not isinstance(price_id, str):
            raise invalid("stripe_price_id", "stripe_price_id must be a string")
        price_id = stripe_price_id(price_id)  # checkout's rule: legacy plan ids are prices too
    if slug is not None and (not isinstance(slug, str) or not _SLUG.fullmatch(slug)):
        raise invalid("plan_slug", "plan_slug must be 1-100 characters")
    quantity = data.get("quantity")
    if isinstance(quantity, float) and quantity.is_integer():
        quantity = int(quantity)
    if quantity is not None and (
        isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 100000
    ):
        raise invalid("quantity", "quantity must be an integer between 1 and 100000")
    behavior = data.get("proration_behavior", "create_prorations")
    if behavior not in lifecycle.PRORATION_BEHAVIORS:
        raise invalid(
            "proration_behavior", "proration_behavior must be one of " + ", ".join(lifecycle.PRORATION_BEHAVIORS)
        )
    return dict(
        external_user_id=user, price_id=price_id, plan_slug=slug, quantity=quantity, proration_behavior=behavior
    )


class LifecycleHandler(BillingHandler):
    """BillingHandler's Stripe mapping, plus the lifecycle's own refusals and Stripe's parameter errors."""

    def _handle_request_exception(self, exc):
        if isinstance(exc, lifecycle.LifecycleError):
            exc = ApiError(exc.status, exc.code, exc.message, field=exc.field)
        elif lifecycle.stripe_field(exc):
            field = lifecycle.stripe_field(exc)
            exc = ApiError(
                400,
                "invalid_field",
                f"{field}: {exc.message}",
                field=field,
                extra={"stripe_request_id": exc.request_id},
            )
        super()._handle_request_exception(exc)

    def stripe_key(self, operation, request):
        return lifecycle.idempotency_key(self.project, operation, self.request.headers.get("Idempotency-Key"), request)


class CancelHandler(LifecycleHandler):
    @idempotent
    async def post(self):
        data = self.json_body()
        _fields(data, ("external_user_id", "at_period_end"))
        user = _user(data)
        at_period_end = data.get("at_period_end", True)
        if not isinstance(at_period_end, bool):
            raise invalid("at_period_end", "at_period_end must be true or false")
        client = self.stripe_client()
        answer = await lifecycle.cancel(
            client, self.project, user, at_period_end, key=self.stripe_key("cancel", [user, at_period_end])
        )
        self.write_json(answer)


class ResumeHandler(LifecycleHandler):
    @idempotent
    async def post(self):
        data = self.json_body()
        _fields(data, ("external_user_id",))
        user = _user(data)
        client = self.stripe_client()
        self.write_json(await lifecycle.resume(client, self.project, user, key=self.stripe_key("resume", [user])))


class ChangeHandler(LifecycleHandler):
    @idempotent
    async def post(self):
        fields = change_request(self.json_body())
        client = self.stripe_client()
        key = self.stripe_key("change", fields)
        self.write_json(await lifecycle.change(client, self.project, fields.pop("external_user_id"), key=key, **fields))


class ChangePreviewHandler(LifecycleHandler):
    @idempotent
    async def post(self):
        fields = change_request(self.json_body())
        client = self.stripe_client()
        self.write_json(await lifecycle.preview(client, self.project, fields.pop("external_user_id"), **fields))


class InvoicesHandler(LifecycleHandler):
    async def get(self):
        user = self.query_arg("external_user_id")
        if user is None:
            raise missing("external_user_id")
        external_user_id(user)
        limit = self.query_int("limit", 10, 1, 100)
        after = self.query_arg("starting_after")
        if after is not None and not _CURSOR.fullmatch(after):
            raise invalid("starting_after", "starting_after must be an invoice id (in_…) from the previous page")
        client = self.stripe_client()
        self.write_json(await lifecycle.invoices(client, self.project, user, limit, after))


class EntitlementHandler(LifecycleHandler):
    def get(self, feature):
        user = self.query_arg("external_user_id")
        if user is None:
            raise missing("external_user_id")
        external_user_id(user)
        if not _FEATURE.fullmatch(feature):
            raise invalid("feature", "feature must be a Stripe feature lookup_key")
        with block():
            found, has_access = entitlements.has_feature(self.project.id, user, feature)
        if not found:
            raise ApiError(404, "not_found", "No customer with this external_user_id.")
        self.write_json({"feature": feature, "external_user_id": user, "has_access": has_access})


default_handlers = [
    (r"/api/subscription/cancel", CancelHandler),
    (r"/api/subscription/resume", ResumeHandler),
    (r"/api/subscription/change", ChangeHandler),
    (r"/api/subscription/change/preview", ChangePreviewHandler),
    (r"/api/invoices", InvoicesHandler),
    (r"/api/entitlements/(?P<feature>[^/]+)", EntitlementHandler),
]
