"""OpenAPI pieces of per-endpoint event filters (enabled_events), merged by handlers/openapi_manage.py."""

from handlers.openapi import error_responses as errors
from handlers.openapi import json_response
from handlers.openapi import schema_ref as ref
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
