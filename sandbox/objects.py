"""Stripe-shaped objects and form decoding for the simulator (shapes from Stripe's fixtures)."""

import contextlib
import contextvars
import secrets
import time
from urllib.parse import parse_qsl

NEW_PERIOD_VERSION = "2025-03-31"  # from this API version on, the billing period lives on the items
INTERVAL_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}


def new_id(prefix):
    return f"{prefix}_{secrets.token_hex(8)}"


# Seconds a simulator's clock runs ahead of the wall clock (Stripe's test clocks), set per call.
_CLOCK_OFFSET: contextvars.ContextVar[int] = contextvars.ContextVar("clock_offset", default=0)


def now():
    """Unix seconds on the clock of the simulator being served (the wall clock plus its advance)."""
    return int(time.time()) + _CLOCK_OFFSET.get()


@contextlib.contextmanager
def clock(offset):
    """Build objects on a clock `offset` seconds ahead of the wall clock."""
    token = _CLOCK_OFFSET.set(int(offset))
    try:
        yield
    finally:
        _CLOCK_OFFSET.reset(token)


def decode_form(raw):
    """Stripe's form encoding (`metadata[k]=v`, `line_items[0][price]=p`) into nested dicts and lists."""
    root = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _listify(root)


def _listify(node):
    if not isinstance(node, dict):
        return node
    node = {key: _listify(value) for key, value in node.items()}
    if node and all(key.isascii() and key.isdigit() for key in node):  # "²".isdigit(), but int("²") fails
        return [node[key] for key in sorted(node, key=int)]
    return node


def merge_metadata(current, update):
    """Stripe merges metadata keys; an empty value deletes the key."""
    merged = dict(current or {})
    for key, value in (update or {}).items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


class StripeError(Exception):
    """An API error as Stripe answers it: HTTP status and the `{"error": {...}}` body.

    `conflict`: for a refusal because of an object's state (a complete session, a canceled subscription),
    the stable code the sandbox API answers with 409; Stripe's own answer stays its 400."""

    def __init__(self, status, body, headers=None, conflict=None):
        super().__init__(body["error"]["message"])
        self.status, self.body, self.headers, self.conflict = status, body, headers or {}, conflict


def invalid(message, param=None, code=None, conflict=None):
    """Stripe's 400 invalid_request_error (code resource_missing for an unknown id in a parameter)."""
    return StripeError(400, error_body(message, code=code, param=param), conflict=conflict)


def missing(kind, obj_id, param="id"):
    """Stripe's resource_missing: 404 for the object in the URL (`param` "id"), 400 for one named in a parameter."""
    return StripeError(
        404 if param == "id" else 400,
        error_body(f"No such {kind}: '{obj_id}'", code="resource_missing", param=param),
    )


def unrecognized(method, parts):
    """Stripe's 404 for a path or method it does not serve."""
    return StripeError(
        404, error_body(f"Unrecognized request URL ({method}: /v1/{'/'.join(parts)}).", code="resource_missing")
    )


def error_body(message, type_="invalid_request_error", code=None, param=None):
    error = {"message": message, "type": type_}
    if code:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param:
        error["param"] = param
    return {"error": error}


def customer(params):
    return {
        "id": new_id("cus"),
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": now(),
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": params.get("description"),
        "discount": None,
        "email": params.get("email"),
        "invoice_prefix": secrets.token_hex(4).upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": merge_metadata({}, params.get("metadata")),
        "name": params.get("name"),
        "next_invoice_sequence": 1,
        "phone": params.get("phone"),
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def checkout_session(params, page_base=None):
    """An open session; its `url` is Stripe's hosted page, or the simulator's under `page_base`."""
    session_id = "cs_test_" + secrets.token_hex(24)
    subscription_data = params.get("subscription_data") or {}
    return {
        "id": session_id,
        "object": "checkout.session",
        "allow_promotion_codes": None,
        "amount_subtotal": None,
        "amount_total": None,
        "cancel_url": params.get("cancel_url"),
        "client_reference_id": params.get("client_reference_id"),
        "created": now(),
        "currency": None,
        "customer": params.get("customer"),
        "customer_creation": None,
        "customer_email": params.get("customer_email"),
        "expires_at": now() + 86400,
        "invoice": None,
        "livemode": False,
        "locale": None,
        "metadata": merge_metadata({}, params.get("metadata")),
        "mode": params.get("mode"),
        "payment_intent": None,
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "status": "open",
        "subscription": None,
        "success_url": params.get("success_url"),
        "ui_mode": "hosted",
        "url": f"{page_base}/checkout/{session_id}" if page_base else f"https://checkout.stripe.com/c/pay/{session_id}",
        # Not part of Stripe's session object: kept so complete_checkout can build the subscription.
        "_line_items": params.get("line_items") or [],
        "_subscription_data": {
            "metadata": merge_metadata({}, subscription_data.get("metadata")),
            "trial_period_days": subscription_data.get("trial_period_days"),
        },
    }


def public(obj):
    """The object without the fake's private `_` keys."""
    return {key: value for key, value in obj.items() if not key.startswith("_")}


def portal_session(params, page_base=None):
    session_id = "bps_" + secrets.token_hex(12)
    token = "test_" + secrets.token_hex(16)
    return {
        "id": session_id,
        "object": "billing_portal.session",
        "configuration": "bpc_" + secrets.token_hex(8),
        "created": now(),
        "customer": params.get("customer"),
        "flow": None,
        "livemode": False,
        "locale": None,
        "on_behalf_of": None,
        "return_url": params.get("return_url"),
        "url": f"{page_base}/portal/{session_id}" if page_base else f"https://billing.stripe.com/p/session/{token}",
    }


def price(
    price_id,
    interval="month",
    unit_amount=2000,
    *,
    interval_count=1,
    usage_type="licensed",
    lookup_key=None,
    currency="usd",
):
    return {
        "id": price_id,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": now(),
        "currency": currency,
        "livemode": False,
        "lookup_key": lookup_key,
        "metadata": {},
        "nickname": None,
        "product": "prod_" + secrets.token_hex(6),
        "recurring": {
            "interval": interval,
            "interval_count": interval_count,
            "meter": None,
            "usage_type": usage_type,
            "trial_period_days": None,
        },
        "tax_behavior": "unspecified",
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def subscription(customer_id, price_obj, *, status="active", metadata=None, trial_days=None, start=None):
    """Internal subscription state: the period always lives on the item; render() picks the shape."""
    start = start or now()
    interval = price_obj["recurring"]["interval"]
    trial_end = start + int(trial_days) * 86400 if status == "trialing" and trial_days else None
    if status == "trialing" and trial_end is None:
        trial_end = start + 14 * 86400
    period_end = trial_end or start + INTERVAL_DAYS.get(interval, 30) * price_obj["recurring"]["interval_count"] * 86400
    sub_id = new_id("sub")
    item = {
        "id": new_id("si"),
        "object": "subscription_item",
        "created": start,
        "discounts": [],
        "metadata": {},
        "price": price_obj,
        "quantity": 1,
        "subscription": sub_id,
        "tax_rates": [],
        "current_period_start": start,
        "current_period_end": period_end,
    }
    return {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "billing_cycle_anchor": start,
        "billing_mode": {"type": "classic"},
        "cancel_at": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically",
        "created": start,
        "currency": "usd",
        "customer": customer_id,
        "days_until_due": None,
        "default_payment_method": None,
        "description": None,
        "discounts": [],
        "ended_at": None,
        "items": {
            "object": "list",
            "data": [item],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": None,
        "livemode": False,
        "metadata": dict(metadata or {}),
        "pause_collection": None,
        "start_date": start,
        "status": status,
        "test_clock": None,
        "trial_end": trial_end,
        "trial_start": start if trial_end else None,
        "_version": 1,
    }


def legacy_plan(price_obj):
    """The `plan` object Stripe puts beside (and before 2018 instead of) an item's `price`."""
    recurring = price_obj["recurring"]
    return {
        "id": price_obj["id"],
        "object": "plan",
        "active": True,
        "amount": price_obj["unit_amount"],
        "currency": price_obj["currency"],
        "interval": recurring["interval"],
        "interval_count": recurring["interval_count"],
        "usage_type": recurring["usage_type"],
        "product": price_obj["product"],
        "nickname": None,
        "metadata": {},
    }


def render_subscription(sub, api_version):
    """The subscription as an API version shows it: before 2025-03-31 the period is top-level only."""
    body = public(sub)
    items = [dict(item) for item in body["items"]["data"]]
    body["items"] = dict(body["items"], data=items)
    if api_version and api_version[:10] < NEW_PERIOD_VERSION:
        body["current_period_start"] = items[0]["current_period_start"]
        body["current_period_end"] = items[0]["current_period_end"]
        for item in items:
            item.pop("current_period_start", None)
            item.pop("current_period_end", None)
    return body


def account():
    return {
        "id": "acct_fake" + secrets.token_hex(4),
        "object": "account",
        "business_profile": {"name": "Fake Stripe"},
        "business_type": None,
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": True,
        "country": "US",
        "created": now(),
        "default_currency": "usd",
        "details_submitted": True,
        "email": "owner@example.test",
        "metadata": {},
        "payouts_enabled": True,
        "settings": {"dashboard": {"display_name": "Fake Stripe", "timezone": "Etc/UTC"}},
        "type": "standard",
    }


def event(type_, data_object, api_version, previous_attributes=None):
    """A Stripe Event wrapping `data_object` (the webhook tests sign and send it)."""
    data = {"object": data_object}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": now(),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def page(objects, params, url):
    """A Stripe list (newest first) honouring limit and starting_after."""
    ordered = sorted(objects, key=lambda o: (o.get("created", 0), o.get("_seq", 0)), reverse=True)
    after = params.get("starting_after")
    if after:
        ids = [o["id"] for o in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    limit = max(1, min(100, int(params.get("limit") or 10)))
    return {"object": "list", "data": ordered[:limit], "has_more": len(ordered) > limit, "url": url}
