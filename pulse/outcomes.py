"""The outcome of a webhook delivery, as stored on WebhookEvent and shown in the console (SPEC 4)."""

from enum import StrEnum


class Outcome(StrEnum):
    """One word per stored delivery; a StrEnum so rows, filters, templates and JSON share the strings."""

    RECEIVED = "received"  # claimed, being applied (or the process died meanwhile)
    PROCESSED = "processed"  # applied: it changed, or confirmed, this project's state
    IGNORED = "ignored"  # recorded with a reason, changed nothing (not ours, not handled, stale)
    FAILED = "failed"  # applying failed; Stripe retries, the console can re-apply
    INVALID_SIGNATURE = "invalid_signature"  # rejected before parsing; no payload kept


OUTCOMES = tuple(Outcome)
