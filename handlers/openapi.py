"""GET /api/openapi.json: the OpenAPI 3.1 description of this API (kept in step with the routes by a test)."""

import functools

from handlers.base import ApiHandler
from pulse import __version__, emails, idempotency, plans, status
from pulse.outcomes import Outcome

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
EXTERNAL_USER_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": r"^[^\x00-\x1f\x7f-\x9f]*$",
    "description": "Your own id for the user: 1-255 characters, no control characters (U+0000-U+001F, U+007F-U+009F).",
}
# What the server accepts, no more and no less (the schema is fuzzed against the running API).
HTTP_URL = {
    "type": "string",
    "maxLength": 2048,
    "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][^\s\x00-\x1f\x7f-\x9f]*)?$",
    "description": "An absolute http(s) URL.",
}
EMAIL = {"type": "string", "maxLength": emails.MAX_LENGTH, "pattern": emails.EMAIL_PATTERN}

# A price id, or a legacy plan id (plan_… or custom); Stripe judges whether it exists (400 on this field).
STRIPE_PRICE_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": 255,
    "pattern": r"^[^\s\x00-\x1f\x7f-\x9f]+$",
    "allOf": [{"not": {"enum": ["price_", "plan_"]}}, {"not": {"pattern": "^prod_"}}],
    "description": "A Stripe price id (price_…) or legacy plan id (plan_… or a custom id).",
}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "code", "message"],
                "properties": {
                    "status": {"type": "integer", "description": "Equals the HTTP status."},
                    "code": {"type": "string", "pattern": "^[a-z_]+$", "description": "Stable snake_case code."},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The offending field, for validation errors."},
                    "stripe_request_id": NULLABLE_STRING,
                },
            }
        },
    },
    "CheckoutRequest": {
        "type": "object",
        "required": ["external_user_id", "email", "plan_slug", "stripe_price_id", "success_url", "cancel_url"],
        "properties": {
            "external_user_id": EXTERNAL_USER_ID,
            "email": EMAIL,
            "plan_slug": {"type": "string", "minLength": 1, "maxLength": 100},
            "stripe_price_id": STRIPE_PRICE_ID,
            "success_url": HTTP_URL,
            "cancel_url": HTTP_URL,
            "interval": {"type": "string", "enum": ["monthly", "yearly"], "default": "monthly"},
            "trial_days": {"type": "integer", "minimum": 1, "maximum": 730},
        },
        "additionalProperties": False,
    },
    "CheckoutResponse": {
        "type": "object",
        "required": ["url", "session_id"],
        "properties": {"url": {"type": "string"}, "session_id": {"type": "string"}},
    },
    "PortalRequest": {
        "type": "object",
        "required": ["external_user_id", "return_url"],
        "properties": {"external_user_id": EXTERNAL_USER_ID, "return_url": HTTP_URL},
        "additionalProperties": False,
    },
    "PortalResponse": {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}},
    "SubscriptionFields": {
        "type": "object",
        "required": [
            "status",
            "has_access",
            "plan_slug",
            "interval",
            "interval_count",
            "quantity",
            "stripe_price_id",
            "current_period_end",
            "cancel_at",
            "trial_end",
            "pause_collection",
            "subscriptions_with_access",
            "stripe_subscription_id",
        ],
        "properties": {
            "status": {"type": "string", "enum": [s.value for s in status.ALL_STATUSES]},
            "has_access": {"type": "boolean"},
            "plan_slug": {
                "type": ["string", "null"],
                "description": "The plan of the current price: the plan "
                "catalog, then the price's lookup_key, then the checkout's plan_slug while the price is "
                "still the one bought at checkout; else null.",
            },
            "interval": {
                "type": ["string", "null"],
                "enum": [*status.INTERVALS.values(), None],
                "description": "The plan item's billing interval; with interval_count (3 + monthly = quarterly).",
            },
            "interval_count": {"type": ["integer", "null"], "minimum": 1},
            "quantity": {"type": ["integer", "null"], "description": "Seats: the plan item's quantity."},
            "stripe_price_id": {
                "type": ["string", "null"],
                "description": "The plan item's price (metered add-ons are never the plan item).",
            },
            "current_period_end": NULLABLE_TIME,
            "cancel_at": NULLABLE_TIME,
            "trial_end": NULLABLE_TIME,
            "pause_collection": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["behavior", "resumes_at"],
                        "properties": {
                            "behavior": {
                                "type": "string",
                                "description": "Stripe's pause_collection.behavior: "
                                + "|".join(status.PAUSE_BEHAVIORS),
                            },
                            "resumes_at": NULLABLE_TIME,
                        },
                    },
                ],
                "description": "Stripe keeps status active while payment collection is paused; has_access then "
                "follows the project's paused-collection setting (default: keeps access).",
            },
            "subscriptions_with_access": {
                "type": "integer",
                "minimum": 0,
                "description": "How many of the user's subscriptions grant access "
                "(more than 1: a duplicate to clean up).",
            },
            "stripe_subscription_id": {"type": "string"},
        },
    },
    "Subscription": {
        "allOf": [
            {"$ref": "#/components/schemas/SubscriptionFields"},
            {
                "type": "object",
                "required": ["external_user_id", "email", "stripe_customer_id"],
                "properties": {
                    "external_user_id": {"type": "string"},
                    "email": {"type": "string"},
                    "stripe_customer_id": NULLABLE_STRING,
                },
            },
        ],
    },
    "ExportedCustomer": {
        "type": "object",
        "required": ["external_user_id", "email", "stripe_customer_id", "created_at", "subscription"],
        "properties": {
            "external_user_id": {"type": "string"},
            "email": {"type": "string"},
            "stripe_customer_id": NULLABLE_STRING,
            "created_at": {"type": "string", "format": "date-time"},
            "subscription": {"oneOf": [{"$ref": "#/components/schemas/SubscriptionFields"}, {"type": "null"}]},
        },
    },
    "Export": {
        "type": "object",
        "required": ["customers"],
        "properties": {"customers": {"type": "array", "items": {"$ref": "#/components/schemas/ExportedCustomer"}}},
    },
    "Plan": {
        "type": "object",
        "required": ["plan_slug", "stripe_price_ids", "created_at", "updated_at"],
        "properties": {
            "plan_slug": {"type": "string"},
            "stripe_price_ids": {"type": "array", "items": {"type": "string"}},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "PlanList": {
        "type": "object",
        "required": ["plans"],
        "properties": {"plans": {"type": "array", "items": {"$ref": "#/components/schemas/Plan"}}},
    },
    "PlanPrices": {
        "type": "object",
        "required": ["stripe_price_ids"],
        "additionalProperties": False,
        "properties": {
            "stripe_price_ids": {
                "type": "array",
                "maxItems": plans.MAX_PRICES,
                "items": {"type": "string", "pattern": f"^{plans.PRICE_ID.pattern}$"},
                "description": "Every Stripe price of the plan; a price belongs to at most one plan.",
            }
        },
    },
    "PlanDeleted": {
        "type": "object",
        "required": ["plan_slug", "deleted"],
        "properties": {"plan_slug": {"type": "string"}, "deleted": {"type": "boolean"}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "database", "version"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "database": {"type": "string", "enum": ["ok", "error"]},
            "version": {"type": "string"},
        },
    },
    "WebhookReceipt": {
        "type": "object",
        "required": ["received"],
        "properties": {
            "received": {"type": "boolean"},
            "duplicate": {"type": "boolean"},
            "outcome": {
                "type": "string",
                "enum": [Outcome.PROCESSED.value, Outcome.IGNORED.value],
                "description": "ignored: not this project's (another "
                "project's, another account or mode), not handled, or stale; "
                "the reason is in the console's webhook log",
            },
        },
    },
    "StripeEvent": {
        "type": "object",
        "description": "A Stripe Event object, exactly as Stripe sent it.",
        "additionalProperties": True,
    },
}

HEADERS = {
    "X-Request-Id": {
        "description": "The request id (yours when you sent a sane X-Request-Id).",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-RateLimit-Limit": {
        "description": "Requests allowed in any window (per project, or per IP unauthenticated).",
        "schema": {"type": "integer"},
    },
    "X-RateLimit-Remaining": {"description": "Requests left in the current window.", "schema": {"type": "integer"}},
    "X-RateLimit-Reset": {
        "description": "Unix time (seconds) at which the next slot frees.",
        "schema": {"type": "integer"},
    },
}
ERROR_TEXT = {
    400: "Invalid JSON, an invalid or unknown field, or a value Stripe refused (`invalid_json`, `invalid_field`; "
    "`field` names the body field, with Stripe's message and `stripe_request_id` when Stripe refused it).",
    401: "Missing, unknown, revoked or expired API key (`unauthorized`).",
    404: "Not found (`not_found`).",
    405: "Method not allowed (`method_not_allowed`).",
    409: "Conflict (`already_subscribed`, `idempotency_conflict`, `plan_conflict`, `checkout_in_progress`: another "
    "checkout for the user is still being opened; see Retry-After).",
    413: "Body over 1 MiB (`payload_too_large`).",
    422: "A required field is missing (`missing_field`).",
    429: "Rate limit exceeded (`rate_limited`); see Retry-After.",
    500: "Internal error (for webhooks: the event was recorded and Stripe will retry).",
    502: "Stripe answered with an error (`stripe_error`, with Stripe's request id).",
    503: "Stripe not configured, webhook secret not configured, or database unavailable.",
}
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def schema_ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _headers(rate_limited=True):
    names = ("X-Request-Id",) + (RATE_LIMIT_HEADERS if rate_limited else ())
    return {name: HEADERS[name] for name in names}


def json_response(schema, description, rate_limited=True, extra_headers=None):
    return {
        "description": description,
        "headers": {**_headers(rate_limited), **(extra_headers or {})},
        "content": {"application/json": {"schema": schema}},
    }


def error_responses(*codes, rate_limited=True):
    out = {}
    for code in codes:
        extra = (
            {"Retry-After": {"description": "Seconds to wait.", "required": True, "schema": {"type": "integer"}}}
            if code == 429
            else None
        )
        out[str(code)] = json_response(schema_ref("Error"), ERROR_TEXT[code], rate_limited, extra)
    return out


IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Same key and body within 24 h: the stored response, without calling Stripe again.",
    "schema": {"type": "string", "pattern": f"^{idempotency.KEY_PATTERN}$"},
}
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
    from handlers import openapi_manage  # issue 16's paths; it imports this module's helpers

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
                                **_headers(),
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
            "schemas": SCHEMAS,
            "securitySchemes": {
                "ApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "pp_live_… (one project).",
                }
            },
        },
    }
    doc["paths"].update(openapi_manage.paths())
    doc["components"]["schemas"] = openapi_manage.extend_subscription({**SCHEMAS, **openapi_manage.SCHEMAS})
    return doc


class OpenApiHandler(ApiHandler):
    auth_required = False

    def get(self):
        self.write_json(document())


default_handlers = [
    (r"/api/openapi\.json", OpenApiHandler),
]
