"""OpenAPI paths and schemas of issue 16: webhook endpoints (outgoing webhooks), subscription lifecycle, entitlements.

handlers/openapi.py merges SCHEMAS and `paths()` into its document.
"""

import copy

from handlers.openapi import (
    EXTERNAL_USER_ID,
    IDEMPOTENCY_KEY,
    NULLABLE_STRING,
    NULLABLE_TIME,
    STRIPE_PRICE_ID,
    json_response,
)
from handlers.openapi import error_responses as errors
from handlers.openapi import schema_ref as ref
from handlers.openapi_webhook_events import ENABLED_EVENTS, UPDATE_ENDPOINT
from pulse import lifecycle

ENDPOINT_ID = {
    "name": "endpoint_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}$"},
}
NULLABLE_INT = {"type": ["integer", "null"]}

SCHEMAS = {
    "WebhookEndpointRequest": {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {
            "url": {
                "type": "string",
                "maxLength": 2048,
                "description": "https (http only to loopback, "
                "with PULSE_WEBHOOK_ALLOW_LOOPBACK=1). Private and link-local addresses are refused "
                "unless PULSE_WEBHOOK_ALLOW_PRIVATE=1.",
            },
            "description": {"type": "string", "maxLength": 200},
            "enabled_events": ENABLED_EVENTS,
        },
    },
    "WebhookEndpoint": {
        "type": "object",
        "required": ["id", "url", "description", "enabled_events", "enabled", "disabled_reason", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "url": {"type": "string"},
            "description": {"type": "string"},
            "enabled_events": ENABLED_EVENTS,
            "enabled": {
                "type": "boolean",
                "description": "false once every delivery failed for "
                "PULSE_WEBHOOK_DISABLE_AFTER seconds; POST .../enable resumes it",
            },
            "disabled_reason": NULLABLE_STRING,
            "created_at": {"type": "string", "format": "date-time"},
            "secret": {"type": "string", "description": "whsec_…: only in the answer of the creation"},
        },
    },
    "WebhookEndpointList": {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": ref("WebhookEndpoint")}},
    },
    "WebhookDelivery": {
        "type": "object",
        "required": [
            "id",
            "webhook_id",
            "event_type",
            "endpoint",
            "status",
            "attempts",
            "last_status_code",
            "last_latency_ms",
            "last_error",
            "last_attempt_at",
            "delivered_at",
            "created_at",
        ],
        "properties": {
            "id": {"type": "integer"},
            "webhook_id": {"type": "string"},
            "event_type": {"type": "string"},
            "endpoint": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "succeeded", "failed"]},
            "attempts": {"type": "integer"},
            "last_status_code": NULLABLE_INT,
            "last_latency_ms": NULLABLE_INT,
            "last_error": NULLABLE_STRING,
            "last_attempt_at": NULLABLE_TIME,
            "delivered_at": NULLABLE_TIME,
            "created_at": {"type": "string", "format": "date-time"},
        },
    },
    "WebhookEndpointDetail": {
        "allOf": [
            ref("WebhookEndpoint"),
            {
                "type": "object",
                "required": ["deliveries"],
                "properties": {
                    "deliveries": {
                        "type": "array",
                        "items": ref("WebhookDelivery"),
                        "description": "The 50 latest, newest first.",
                    }
                },
            },
        ]
    },
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
    "WebhookEndpointDeleted": {
        "type": "object",
        "required": ["id", "deleted"],
        "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}},
    },
    "WebhookQueued": {
        "type": "object",
        "required": ["webhook_id"],
        "properties": {
            "webhook_id": {"type": "string"},
            "event_type": {"type": "string"},
            "resent": {"type": "boolean"},
        },
    },
}


def _empty_post(summary, response, status="202"):
    return {
        "post": {
            "summary": summary,
            "parameters": [ENDPOINT_ID, IDEMPOTENCY_KEY],
            "responses": {
                status: json_response(ref(response), "Queued" if status == "202" else "OK"),
                **errors(400, 401, 404, 409, 429, 503),
            },
        }
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


def extend_subscription(schemas):
    """GET /api/subscription's `features`: lookup keys of the customer's active Stripe entitlements."""
    schemas = copy.deepcopy(schemas)
    own = schemas["Subscription"]["allOf"][1]
    own["required"] = [*own["required"], "features"]
    own["properties"]["features"] = {
        "type": "array",
        "items": {"type": "string"},
        "description": "Lookup keys of the customer's active Stripe Entitlements.",
    }
    return schemas


def paths():
    """The paths of this module, for the OpenAPI document."""
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
        "/api/webhook-endpoints": {
            "get": {
                "summary": "The project's outgoing webhook endpoints",
                "responses": {"200": json_response(ref("WebhookEndpointList"), "OK"), **errors(401, 429, 503)},
            },
            "post": {
                "summary": "Add an endpoint; the answer shows its whsec_ signing secret, once",
                "description": "Events (Standard Webhooks signed: webhook-id, webhook-timestamp, "
                "webhook-signature): subscription.updated, checkout.completed, customer.deleted, "
                "webhook.test.",
                "parameters": [IDEMPOTENCY_KEY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("WebhookEndpointRequest")}},
                },
                "responses": {
                    "201": json_response(ref("WebhookEndpoint"), "Created"),
                    **errors(400, 401, 409, 413, 422, 429, 503),
                },
            },
        },
        "/api/webhook-endpoints/{endpoint_id}": {
            "get": {
                "summary": "An endpoint and its latest deliveries",
                "parameters": [ENDPOINT_ID],
                "responses": {"200": json_response(ref("WebhookEndpointDetail"), "OK"), **errors(401, 404, 429, 503)},
            },
            "patch": UPDATE_ENDPOINT,
            "delete": {
                "summary": "Delete an endpoint and its deliveries",
                "parameters": [ENDPOINT_ID],
                "responses": {
                    "200": json_response(ref("WebhookEndpointDeleted"), "Deleted"),
                    **errors(401, 404, 429, 503),
                },
            },
        },
        "/api/webhook-endpoints/{endpoint_id}/test": _empty_post(
            "Send a webhook.test event to the endpoint", "WebhookQueued"
        ),
        "/api/webhook-endpoints/{endpoint_id}/enable": _empty_post(
            "Re-enable a disabled endpoint", "WebhookEndpoint", "200"
        ),
        "/api/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/resend": {
            "post": {
                "summary": "Send a delivery again, with the same webhook-id",
                "parameters": [
                    ENDPOINT_ID,
                    IDEMPOTENCY_KEY,
                    {
                        "name": "delivery_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 10**17},
                    },
                ],
                "responses": {
                    "202": json_response(ref("WebhookQueued"), "Queued"),
                    **errors(400, 401, 404, 409, 429, 503),
                },
            }
        },
    }
