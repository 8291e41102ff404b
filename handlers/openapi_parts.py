"""The building blocks of the OpenAPI document: field schemas, headers and the error responses."""

from pulse import emails, idempotency

NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
NULLABLE_INT = {"type": ["integer", "null"]}
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
    """A JSON Schema reference to components/schemas/`name`."""
    return {"$ref": f"#/components/schemas/{name}"}


def standard_headers(rate_limited=True):
    """The headers every answer carries: X-Request-Id, plus the rate-limit trio unless `rate_limited` is false."""
    names = ("X-Request-Id",) + (RATE_LIMIT_HEADERS if rate_limited else ())
    return {name: HEADERS[name] for name in names}


def json_response(schema, description, rate_limited=True, extra_headers=None):
    """An OpenAPI response object: a JSON body of `schema`, with the standard headers and `extra_headers`."""
    return {
        "description": description,
        "headers": {**standard_headers(rate_limited), **(extra_headers or {})},
        "content": {"application/json": {"schema": schema}},
    }


def error_responses(*codes, rate_limited=True):
    """{"<status>": response} in the error envelope for each HTTP status in `codes` (429 adds Retry-After)."""
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
