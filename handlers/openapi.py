"""GET /api/openapi.json: the OpenAPI 3.1 document, core paths here (kept in step with the routes by a test)."""

import functools

from handlers import openapi_manage, openapi_sandbox, openapi_webhook_endpoints
from handlers.base import ApiHandler
from handlers.openapi_parts import (
    EXTERNAL_USER_ID,
    IDEMPOTENCY_KEY,
    error_responses,
    json_response,
    schema_ref,
    standard_headers,
)
from handlers.openapi_schemas import SCHEMAS
from pulse import __version__, plans

PLAN_SLUG = {
    "name": "plan_slug",
    "in": "path",
    "required": True,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": plans.SLUG_MAX,
        "pattern": r"^(?!\.\.?$)[^/\x00-\x1f\x7f-\x9f]+$",
    },
}


def _post(summary, request, response, *errors):
    return {
        "summary": summary,
        "parameters": [IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema_ref(request)}}},
        "responses": {
            "200": json_response(schema_ref(response), "OK"),
            **error_responses(400, 401, 409, 413, 422, 429, 502, 503, *errors),
        },
    }


def _webhook(summary, parameters):
    return {
        "post": {
            "summary": summary,
            "security": [],
            "parameters": parameters,
            "description": "Verified with the Stripe-Signature header. Not rate limited: Stripe delivers in bursts.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema_ref("StripeEvent")}}},
            "responses": {
                "200": json_response(schema_ref("WebhookReceipt"), "Recorded (processed, ignored or duplicate)", False),
                **error_responses(400, 404, 413, 500, 503, rate_limited=False),
            },
        }
    }


@functools.lru_cache(maxsize=1)
def document():
    """The OpenAPI 3.1 document, as a dict."""
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "PaymentPulse",
            "version": __version__,
            "description": "Self-hosted, multi-tenant Stripe billing gateway. Every error has the shape "
            '{"error": {"status", "code", "message", "field"?}}.',
        },
        "security": [{"ApiKey": []}],
        "paths": {
            "/api/health": {
                "get": {
                    "summary": "Liveness and database reachability",
                    "security": [],
                    "responses": {
                        "200": json_response(schema_ref("Health"), "Up"),
                        "302": {
                            "description": "Browsers (Accept prefers text/html) go to the status page",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        "503": json_response(schema_ref("Health"), "The database is unreachable"),
                        **error_responses(429),
                    },
                },
                "head": {
                    "summary": "Liveness",
                    "security": [],
                    "responses": {
                        "200": {"description": "Up"},
                        "503": {"description": "Database unreachable"},
                        "429": {"description": "Rate limited"},
                    },
                },
            },
            "/api/checkout": {
                "post": _post("Start a subscription in Stripe Checkout", "CheckoutRequest", "CheckoutResponse")
            },
            "/api/portal": {
                "post": {
                    **_post("Open the Stripe Customer Portal for a user", "PortalRequest", "PortalResponse", 404),
                    "description": "404 not_found: the user has no Stripe customer (never "
                    "checked out, or it was deleted in Stripe; the next "
                    "checkout creates a new one).",
                }
            },
            "/api/subscription": {
                "get": {
                    "summary": "A user's current subscription (access first, then most recent)",
                    "parameters": [
                        {"name": "external_user_id", "in": "query", "required": True, "schema": EXTERNAL_USER_ID}
                    ],
                    "responses": {
                        "200": json_response(schema_ref("Subscription"), "OK"),
                        **error_responses(400, 401, 404, 422, 429, 503),
                    },
                }
            },
            "/api/plans": {
                "get": {
                    "summary": "The plan catalog: each plan_slug with its Stripe price ids",
                    "responses": {"200": json_response(schema_ref("PlanList"), "OK"), **error_responses(401, 429, 503)},
                }
            },
            "/api/plans/{plan_slug}": {
                "put": {
                    "summary": "Create or replace a plan's Stripe price ids",
                    "parameters": [PLAN_SLUG],
                    "description": "Subscriptions on prices that join or leave the plan get their plan_slug at "
                    "once. A price already in another plan: 409 plan_conflict on stripe_price_ids.",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": schema_ref("PlanPrices")}},
                    },
                    "responses": {
                        "200": json_response(schema_ref("Plan"), "Replaced"),
                        "201": json_response(schema_ref("Plan"), "Created"),
                        **error_responses(400, 401, 409, 413, 422, 429, 503),
                    },
                },
                "delete": {
                    "summary": "Remove a plan from the catalog",
                    "parameters": [PLAN_SLUG],
                    "responses": {
                        "200": json_response(schema_ref("PlanDeleted"), "Deleted"),
                        **error_responses(400, 401, 404, 429, 503),
                    },
                },
            },
            "/api/customers/export": {
                "get": {
                    "summary": "Every customer with its current subscription, streamed",
                    "parameters": [
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
                        },
                        {
                            "name": "bom",
                            "in": "query",
                            "required": False,
                            "description": "true: the CSV starts with a UTF-8 byte order mark (for Excel).",
                            "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "An attachment: customers-<project>-<date>.json|csv",
                            "headers": {
                                **standard_headers(),
                                "Content-Disposition": {"required": True, "schema": {"type": "string"}},
                            },
                            "content": {
                                "application/json": {"schema": schema_ref("Export")},
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        **error_responses(400, 401, 429, 503),
                    },
                }
            },
            "/api/webhook": _webhook("Stripe events for the deployment-wide endpoint", []),
            "/api/webhook/{project_id}": _webhook(
                "Stripe events for one project",
                [
                    {
                        "name": "project_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
                    }
                ],
            ),
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [],
                    "responses": {"200": json_response({"type": "object"}, "OpenAPI 3.1"), **error_responses(429)},
                }
            },
        },
        "components": {
            "schemas": {
                **SCHEMAS,
                **openapi_webhook_endpoints.SCHEMAS,
                **openapi_manage.SCHEMAS,
                **openapi_sandbox.SCHEMAS,
            },
            "securitySchemes": {
                "ApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "pp_live_… (one project); a sandbox project's pp_test_… (also /sandbox/api/).",
                }
            },
        },
    }
    doc["paths"].update(openapi_manage.paths())
    doc["paths"].update(openapi_webhook_endpoints.paths())
    doc["paths"].update(openapi_sandbox.paths())
    return doc


class OpenApiHandler(ApiHandler):
    """Serves `document()`; no API key needed."""

    auth_required = False

    def get(self):
        self.write_json(document())


default_handlers = [
    (r"/api/openapi\.json", OpenApiHandler),
]
