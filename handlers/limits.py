"""Which rate limit an API request counts against (SPEC 3.1); ApiHandler.prepare() applies it."""

from pulse.ratelimit import address_bucket
from web import client_ip

# Stripe delivers webhooks in bursts from a handful of IPs: an anonymous per-IP limit would
# refuse legitimate deliveries (Stripe then retries for days); signatures already gate them, and
# forgeries are capped where they are recorded (pulse.webhooks.record_invalid).
EXEMPT_PREFIXES = ("/api/webhook",)


def bucket(handler):
    """(key, rate) for this request: per project when authenticated, else per client address.

    Failed key checks count per address too, so guessing keys is throttled; None when exempt.
    """
    if handler.request.path.startswith(EXEMPT_PREFIXES):
        return None
    config = handler.config
    if handler.project is not None:
        return "project:" + handler.project.public_id, config.rate_limit_authenticated
    return "ip:" + address_bucket(client_ip(handler.request, config)), config.rate_limit_anonymous


async def check(handler):
    """Count this request -> the Decision (its headers go on every response), or None when exempt."""
    found = bucket(handler)
    if found is None:
        return None
    key, rate = found
    return await handler.settings["rate_limiter"].hit(key, rate)
