"""OpenAPI schemas and paths of the sandbox API (README "Sandbox API"; sandbox/api.py): pp_test_ keys only."""

from handlers.openapi_parts import error_responses as errors
from handlers.openapi_parts import json_response, standard_headers
from handlers.openapi_parts import schema_ref as ref

PRICE_ID = {"type": "string", "pattern": "^price_[A-Za-z0-9_]{1,200}$"}
PRODUCT_ID = {"type": "string", "pattern": "^prod_[A-Za-z0-9_]{1,200}$"}
LOOKUP_KEY = {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f/]{1,80}$"}
OBJECT_ID = {"type": "string", "pattern": "^[A-Za-z0-9_]{1,255}$"}
ACTIONS = ["cancel", "resume", "pause_collection", "unpause_collection", "cancel_now"]
MAX_ADVANCE = 10 * 366 * 86400


def _path_id(name):
    return {"name": name, "in": "path", "required": True, "schema": OBJECT_ID}


def _error(status, text):
    return {
        str(status): {
            "description": text,
            "headers": standard_headers(),
            "content": {"application/json": {"schema": ref("Error")}},
        }
    }


NOT_A_SANDBOX = _error(403, "The key belongs to a live project (`not_a_sandbox`).")
DECLINED = _error(402, "The card was declined (`card_declined`); the session stays open.")


def _body(properties, required=(), one_of=None):
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    if one_of:
        schema["oneOf"] = one_of
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _action(summary, body, *codes, extra=None, optional_body=False):
    operation = {
        "summary": summary,
        "responses": {
            "200": json_response(ref("SandboxAction"), "Done; its events were delivered"),
            **errors(400, 401, *codes, 413, 422, 429, 503),
            **NOT_A_SANDBOX,
            **(extra or {}),
        },
    }
    if body is not None:
        operation["requestBody"] = dict(body, required=not optional_body)
    return operation


SCHEMAS = {
    "SandboxClock": {
        "type": "object",
        "required": ["now", "advanced_seconds", "after_retries"],
        "properties": {
            "now": {"type": "string", "format": "date-time", "description": "The simulator's time (ISO 8601, Z)."},
            "advanced_seconds": {"type": "integer"},
            "after_retries": {"type": "string", "enum": ["canceled", "unpaid", "past_due"]},
        },
    },
    "SandboxAction": {
        "type": "object",
        "required": ["events", "delivered"],
        "properties": {
            "result": {"description": "The changed object, in Stripe's shape (absent when none)."},
            "events": {"type": "array", "items": {"type": "string"}, "description": "Stripe event types sent"},
            "delivered": {"type": "integer", "description": "How many the project's webhook endpoint accepted"},
        },
    },
    "SandboxAdvance": {
        "allOf": [ref("SandboxClock"), ref("SandboxAction")],
    },
    "SandboxList": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": {"type": "object"}}},
    },
}


def paths():
    """{path: path item} of the sandbox API, for the OpenAPI document."""
    feature_body = _body(
        {"lookup_key": LOOKUP_KEY, "price": PRICE_ID, "product": PRODUCT_ID, "name": {"type": ["string", "null"]}},
        ["lookup_key"],
        one_of=[{"required": ["price"]}, {"required": ["product"]}],
    )
    return {
        "/sandbox/api/clock": {
            "get": {
                "summary": "The simulator's clock and its after-retries setting",
                "responses": {
                    "200": json_response(ref("SandboxClock"), "OK"),
                    **errors(401, 429, 503),
                    **NOT_A_SANDBOX,
                },
            }
        },
        "/sandbox/api/clock/advance": {
            "post": _action(
                "Move the clock forward, applying every trial end, renewal, retry and cancel on the way",
                _body(
                    {
                        "days": {"type": "integer", "minimum": 1, "maximum": MAX_ADVANCE // 86400},
                        "seconds": {"type": "integer", "minimum": 1, "maximum": MAX_ADVANCE},
                    },
                    one_of=[{"required": ["days"]}, {"required": ["seconds"]}],
                ),
                409,
                extra={"200": json_response(ref("SandboxAdvance"), "The clock after the move, and the events sent")},
            )
        },
        "/sandbox/api/settings": {
            "post": _action(
                "What a subscription becomes once every retry failed",
                _body(
                    {"after_retries": {"type": "string", "enum": ["canceled", "unpaid", "past_due"]}}, ["after_retries"]
                ),
                409,
            )
        },
        "/sandbox/api/subscriptions": {
            "get": {
                "summary": "Every subscription of the simulator, newest first, in Stripe's shape",
                "responses": {
                    "200": json_response(ref("SandboxList"), "OK"),
                    **errors(401, 429, 503),
                    **NOT_A_SANDBOX,
                },
            }
        },
        "/sandbox/api/subscriptions/{subscription_id}/switch": {
            "post": dict(
                _action(
                    "Switch the subscription to another price (made on first use)",
                    _body({"price": PRICE_ID}, ["price"]),
                    404,
                    409,
                ),
                parameters=[_path_id("subscription_id")],
            )
        },
        "/sandbox/api/subscriptions/{subscription_id}/{action}": {
            "post": dict(
                _action(
                    "A Customer Portal move: cancel at period end, resume, pause or unpause collection, cancel now",
                    None,
                    404,
                    409,
                ),
                parameters=[
                    _path_id("subscription_id"),
                    {"name": "action", "in": "path", "required": True, "schema": {"type": "string", "enum": ACTIONS}},
                ],
            )
        },
        "/sandbox/api/checkout_sessions/{session_id}/pay": {
            "post": dict(
                _action(
                    "Pay the Checkout Session as its hosted page does",
                    _body({"card": {"type": "string", "pattern": "^[0-9 ]{1,40}$", "default": "4242424242424242"}}),
                    404,
                    409,
                    extra=DECLINED,
                    optional_body=True,
                ),
                parameters=[_path_id("session_id")],
            )
        },
        "/sandbox/api/customers/{customer_id}/card": {
            "post": dict(
                _action(
                    "The customer's test card: pays, declines every charge, or none",
                    _body({"card": {"type": "string", "enum": ["ok", "fails", "none"]}}, ["card"]),
                    404,
                    409,
                ),
                parameters=[_path_id("customer_id")],
            )
        },
        "/sandbox/api/prices": {
            "post": _action(
                "Define a recurring price before its first use (409 price_exists: prices are immutable)",
                _body(
                    {
                        "id": PRICE_ID,
                        "unit_amount": {"type": "integer", "minimum": 0, "maximum": 99_999_999, "default": 2000},
                        "interval": {"type": "string", "enum": ["day", "week", "month", "year"], "default": "month"},
                        "currency": {"type": "string", "pattern": "^[a-z]{3}$", "default": "usd"},
                    },
                    ["id"],
                ),
                409,
            )
        },
        "/sandbox/api/features": {
            "get": {
                "summary": "Every Feature on a Product",
                "responses": {
                    "200": json_response(ref("SandboxList"), "OK"),
                    **errors(401, 429, 503),
                    **NOT_A_SANDBOX,
                },
            }
        },
        "/sandbox/api/features/{action}": {
            "post": dict(
                _action("Attach a Feature to a Product (or detach it), by price or product", feature_body, 404, 409),
                parameters=[
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": ["attach", "detach"]},
                    }
                ],
            )
        },
    }
