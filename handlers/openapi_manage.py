"""OpenAPI schemas and paths of the subscription lifecycle, invoices and entitlements (issue 16; handlers/manage.py)."""

from handlers.openapi_parts import (
    EXTERNAL_USER_ID,
    IDEMPOTENCY_KEY,
    NULLABLE_INT,
    NULLABLE_STRING,
    NULLABLE_TIME,
    STRIPE_PRICE_ID,
    json_response,
)
from handlers.openapi_parts import error_responses as errors
from handlers.openapi_parts import schema_ref as ref
from pulse import lifecycle

SCHEMAS = {
    "CancelRequest": {
        "type": "object",
        "required": ["external_user_id"],
        "additionalProperties": False,
        "properties": {
            "external_user_id": EXTERNAL_USER_ID,
            "at_period_end": {"type": "boolean", "default": True, "description": "false: cancel now (no refund)"},
        },
    },
    "ResumeRequest": {
        "type": "object",
        "required": ["external_user_id"],
        "additionalProperties": False,
        "properties": {"external_user_id": EXTERNAL_USER_ID},
    },
    "ChangeRequest": {
        "type": "object",
        "required": ["external_user_id"],
        "additionalProperties": False,
        "anyOf": [{"required": ["stripe_price_id"]}, {"required": ["plan_slug"]}],
        "description": "stripe_price_id, or plan_slug (the plan's only price in the catalog); at least one.",
        "properties": {
            "external_user_id": EXTERNAL_USER_ID,
            "stripe_price_id": STRIPE_PRICE_ID,
            "plan_slug": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$",
            },
            "quantity": {"type": "integer", "minimum": 1, "maximum": 100000},
            "proration_behavior": {
                "type": "string",
                "enum": list(lifecycle.PRORATION_BEHAVIORS),
                "default": "create_prorations",
            },
        },
    },
    "ChangePreview": {
        "type": "object",
        "required": ["currency", "amount_due_now", "proration_amount", "next_invoice", "lines"],
        "properties": {
            "currency": NULLABLE_STRING,
            "amount_due_now": {"type": ["integer", "null"], "description": "Minor units."},
            "proration_amount": {"type": "integer"},
            "next_invoice": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {"amount_due": NULLABLE_INT, "total": NULLABLE_INT, "date": NULLABLE_TIME},
                    },
                ]
            },
            "stripe_price_id": NULLABLE_STRING,
            "quantity": NULLABLE_INT,
            "proration_behavior": {"type": "string"},
            "lines": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Invoice": {
        "type": "object",
        "required": [
            "id",
            "number",
            "status",
            "amount_due",
            "amount_paid",
            "amount_remaining",
            "total",
            "currency",
            "created",
            "period_start",
            "period_end",
            "hosted_invoice_url",
            "invoice_pdf",
        ],
        "properties": {
            "id": NULLABLE_STRING,
            "number": NULLABLE_STRING,
            "status": NULLABLE_STRING,
            "amount_due": NULLABLE_INT,
            "amount_paid": NULLABLE_INT,
            "amount_remaining": NULLABLE_INT,
            "total": NULLABLE_INT,
            "currency": NULLABLE_STRING,
            "created": NULLABLE_TIME,
            "period_start": NULLABLE_TIME,
            "period_end": NULLABLE_TIME,
            "hosted_invoice_url": NULLABLE_STRING,
            "invoice_pdf": NULLABLE_STRING,
            "stripe_subscription_id": NULLABLE_STRING,
        },
    },
    "InvoiceList": {
        "type": "object",
        "required": ["data", "has_more", "next_starting_after"],
        "properties": {
            "data": {"type": "array", "items": ref("Invoice")},
            "has_more": {"type": "boolean"},
            "next_starting_after": NULLABLE_STRING,
        },
    },
    "Entitlement": {
        "type": "object",
        "required": ["feature", "external_user_id", "has_access"],
        "properties": {
            "feature": {"type": "string"},
            "external_user_id": {"type": "string"},
            "has_access": {"type": "boolean"},
        },
    },
}


def _lifecycle_post(summary, request, response, description):
    return {
        "post": {
            "summary": summary,
            "description": description,
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(request)}}},
            "responses": {
                "200": json_response(ref(response), "OK"),
                **errors(400, 401, 404, 409, 413, 422, 429, 502, 503),
            },
        }
    }


_STORED = (
    "Stripe's answer is stored at once (newer wins, as webhooks) and the tenant's app gets "
    "subscription.updated. 409 subscription_ended when the user's current subscription has ended."
)
_USER_QUERY = {"name": "external_user_id", "in": "query", "required": True, "schema": EXTERNAL_USER_ID}


def paths():
    """{path: path item} of the lifecycle, invoice and entitlement operations, for the OpenAPI document."""
    return {
        "/api/subscription/cancel": _lifecycle_post(
            "Cancel the user's subscription at the period end, or now", "CancelRequest", "Subscription", _STORED
        ),
        "/api/subscription/resume": _lifecycle_post(
            "Undo a scheduled cancellation (cancel_at_period_end, cancel_at)",
            "ResumeRequest",
            "Subscription",
            _STORED + " 409 not_cancelling when none is scheduled.",
        ),
        "/api/subscription/change": _lifecycle_post(
            "Swap the plan item to another price or quantity", "ChangeRequest", "Subscription", _STORED
        ),
        "/api/subscription/change/preview": _lifecycle_post(
            "Stripe's invoice preview of a change (nothing changes)",
            "ChangeRequest",
            "ChangePreview",
            "Amounts in minor units of `currency`.",
        ),
        "/api/invoices": {
            "get": {
                "summary": "The user's invoices, newest first, paged as Stripe pages",
                "parameters": [
                    _USER_QUERY,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^(100|[1-9][0-9]?)$", "default": "10"},
                    },
                    {
                        "name": "starting_after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^in_[A-Za-z0-9]{1,250}$"},
                    },
                ],
                "responses": {
                    "200": json_response(ref("InvoiceList"), "OK"),
                    **errors(400, 401, 404, 422, 429, 502, 503),
                },
            }
        },
        "/api/entitlements/{feature}": {
            "get": {
                "summary": "Whether the user has a feature (Stripe Entitlements), from the database",
                "parameters": [
                    {
                        "name": "feature",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f/]{1,255}$"},
                    },
                    _USER_QUERY,
                ],
                "responses": {"200": json_response(ref("Entitlement"), "OK"), **errors(400, 401, 404, 422, 429, 503)},
            }
        },
    }
