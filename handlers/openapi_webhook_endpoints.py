"""OpenAPI schemas and paths of the outgoing webhook endpoints (issue 16; handlers/webhook_endpoints.py)."""

from handlers.openapi_parts import IDEMPOTENCY_KEY, NULLABLE_INT, NULLABLE_STRING, NULLABLE_TIME, json_response
from handlers.openapi_parts import error_responses as errors
from handlers.openapi_parts import schema_ref as ref
from pulse import endpoints, outbox

ENDPOINT_ID = {
    "name": "endpoint_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}$"},
}
_EVENTS = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": {"type": "string", "enum": [outbox.ALL_EVENTS, *endpoints.SUBSCRIBABLE]},
}
ENABLED_EVENTS = {
    **_EVENTS,
    "default": [outbox.ALL_EVENTS],
    "description": 'The event types the endpoint receives; ["*"] (the default) is every type, '
    "including types added later. webhook.test is always sent when asked for.",
}
UPDATE_ENDPOINT = {
    "summary": "Change an endpoint's enabled_events or description (applies from the next change on)",
    "parameters": [ENDPOINT_ID],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"description": {"type": "string", "maxLength": 200}, "enabled_events": _EVENTS},
                }
            }
        },
    },
    "responses": {"200": json_response(ref("WebhookEndpoint"), "OK"), **errors(400, 401, 404, 413, 429, 503)},
}

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


def paths():
    """{path: path item} of the webhook-endpoint operations, for the OpenAPI document."""
    return {
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
