"""The OpenAPI component schemas of the core API: errors, checkout, portal, subscription, plans, export, webhooks."""

from handlers.openapi_parts import EMAIL, EXTERNAL_USER_ID, HTTP_URL, NULLABLE_STRING, NULLABLE_TIME, STRIPE_PRICE_ID
from pulse import plans, status
from pulse.outcomes import Outcome

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
                "required": ["external_user_id", "email", "stripe_customer_id", "features"],
                "properties": {
                    "external_user_id": {"type": "string"},
                    "email": {"type": "string"},
                    "stripe_customer_id": NULLABLE_STRING,
                    "features": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Lookup keys of the customer's active Stripe Entitlements.",
                    },
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
                "minItems": 1,
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
