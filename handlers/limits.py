"""Rate-limit glue (SPEC 3.1): the auth hook that counts each API request and sets the headers."""

from handlers.base import ApiError
from handlers.transport import client_ip

# Stripe delivers webhooks in bursts from a handful of IPs: an anonymous per-IP limit would
# refuse legitimate deliveries (Stripe then retries for days); signatures already gate them.
EXEMPT_PREFIXES = ("/api/webhook",)


async def rate_limit(handler):
    """Count the request per project (authenticated) or per client IP (anonymous, failed auth)."""
    if handler.request.path.startswith(EXEMPT_PREFIXES):
        return
    config = handler.config
    if handler.project is not None:
        key, rate = "project:" + handler.project.public_id, config.rate_limit_authenticated
    else:
        key, rate = "ip:" + client_ip(handler.request, config.trust_proxy), config.rate_limit_anonymous
    decision = await handler.settings["rate_limiter"].hit(key, rate)
    handler.sticky_headers.update(decision.headers())
    for name, value in decision.headers().items():
        handler.set_header(name, value)
    if not decision.allowed:
        raise ApiError(429, "rate_limited",
                       f"Rate limit of {rate} exceeded; retry in {decision.retry_after} s.")
