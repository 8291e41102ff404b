"""Outgoing webhook endpoints: the tenant's URLs (SSRF rule), their whsec_ secrets, enabling and deleting them."""

import base64
import ipaddress
import json
import secrets
import socket
from typing import Any
from urllib.parse import urlsplit

from pulse.config import Config
from pulse.db import isoformat, utcnow
from pulse.models import Project, WebhookDelivery, WebhookEndpoint
from pulse.outbox import ALL_EVENTS, EVENT_TYPES, PENDING, now_ms, wake
from pulse.security import SecretBox, public_id

MAX_ENDPOINTS = 16
# What an endpoint may subscribe to; webhook.test is sent to whichever endpoint asked for it.
SUBSCRIBABLE = tuple(event_type for event_type in EVENT_TYPES if event_type != "webhook.test")


class EndpointError(ValueError):
    """A webhook endpoint request we refuse: `field` and a message (API: 400 invalid_field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def loopback_host(host: str) -> bool:
    """Whether `host` names the loopback interface (localhost or a loopback literal)."""
    if host.lower() in ("localhost", "localhost.") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# IPv6 forms that carry an IPv4 address a packet may end up at: NAT64 (RFC 6052, RFC 8215).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# IETF protocol assignments (RFC 6890): Python 3.11 calls most of it global, IANA does not.
_IETF = ipaddress.ip_network("192.0.0.0/24")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, 6to4, Teredo (client) or NAT64 address, else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in network for network in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str, config: Config) -> str | None:
    """Why an outgoing webhook may not go to IP `address` (a string), or None when it may (SSRF rule).

    IPv6 forms that wrap an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by that address;
    raises ValueError when `address` is not an IP literal.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    inner = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    # The wrapper and what it wraps must both pass: Teredo's own prefix is not global, 6to4's is.
    return (inner and _refusal(inner, config)) or _refusal(ip, config)


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, config: Config) -> str | None:
    if ip.is_loopback:
        allowed = config.webhook_allow_loopback
        return None if allowed else "a loopback address (PULSE_WEBHOOK_ALLOW_LOOPBACK=1 allows it)"
    if ip.is_unspecified or ip.is_multicast:
        return "an unspecified or multicast address"
    special = isinstance(ip, ipaddress.IPv4Address) and ip in _IETF
    if special or ip.is_private or ip.is_link_local or ip.is_reserved or not ip.is_global:
        return (
            None
            if config.webhook_allow_private
            else "a private or link-local address (PULSE_WEBHOOK_ALLOW_PRIVATE=1 allows it)"
        )
    return None


def _ip_literal(host: str) -> str:
    """`host` as a standard IP literal when it is one in any legacy form (2130706433, 0x7f.1, 017700000001)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))  # the forms resolvers accept without DNS
    except OSError:
        return host


def check_url(url: object, config: Config) -> str:
    """The endpoint URL if acceptable, else EndpointError: https (http only to loopback), no credentials."""
    if not isinstance(url, str) or not url or len(url) > 2048 or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise EndpointError("url", "url must be an absolute https URL of at most 2048 characters")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise EndpointError("url", "url must be an absolute https URL") from None
    if port == 0:
        raise EndpointError("url", "url must name a port from 1 to 65535")
    if parts.scheme not in ("https", "http") or not host:
        raise EndpointError("url", "url must be an absolute https URL")
    if parts.username or parts.password:
        raise EndpointError("url", "url must not carry credentials")
    if parts.scheme == "http" and not loopback_host(host):
        raise EndpointError("url", "url must use https (http is accepted only for loopback, in development)")
    literal = _ip_literal(host) if not loopback_host(host) or host.lower().startswith(("127.", "::")) else "127.0.0.1"
    try:
        reason = address_refusal(literal, config)
    except ValueError:
        reason = None  # a DNS name: checked at every send, after resolution
    if reason:
        raise EndpointError("url", f"url points to {reason}")
    return url


def check_description(value: object) -> str:
    """The description if acceptable (a string of at most 200 characters, no control characters), else EndpointError."""
    if not isinstance(value, str) or len(value) > 200:
        raise EndpointError("description", "description must be a string of at most 200 characters")
    if any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in value):
        raise EndpointError("description", "description must not contain control characters")
    return value


def check_events(value: object) -> list[str]:
    """enabled_events to store (None: all): a non-empty list of SUBSCRIBABLE types or "*"; else EndpointError."""
    if value is None:
        return [ALL_EVENTS]
    choices = ", ".join((ALL_EVENTS, *SUBSCRIBABLE))
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise EndpointError("enabled_events", f"enabled_events must be a non-empty list of event types ({choices})")
    unknown = [item for item in value if item != ALL_EVENTS and item not in SUBSCRIBABLE]
    if unknown:
        raise EndpointError("enabled_events", f"{unknown[0][:64]!r} is not an event type ({choices})")
    return [ALL_EVENTS] if ALL_EVENTS in value else sorted(set(value))


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def events_of(endpoint: WebhookEndpoint) -> list[str]:
    """The endpoint's enabled_events as a list (["*"]: every type)."""
    return json.loads(endpoint.enabled_events)


def endpoint_json(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The public JSON of an endpoint (no secret); created_at is ISO 8601 UTC with Z."""
    return {
        "id": endpoint.public_id,
        "url": endpoint.url,
        "description": endpoint.description,
        "enabled_events": events_of(endpoint),
        "enabled": bool(endpoint.enabled),
        "disabled_reason": endpoint.disabled_reason,
        "created_at": isoformat(endpoint.created_at),
    }


def create_endpoint(
    project: Project,
    url: object,
    box: SecretBox,
    config: Config,
    description: str | None = "",
    enabled_events: object = None,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint -> (WebhookEndpoint, its whsec_ secret, shown this once). Raises EndpointError.

    `enabled_events`: the event types it receives (a list, see check_events); None means all.
    """
    check_url(url, config)
    events = check_events(enabled_events)
    check_description(description or "")
    if WebhookEndpoint.select().where(WebhookEndpoint.project == project).count() >= MAX_ENDPOINTS:
        raise EndpointError("url", f"a project has at most {MAX_ENDPOINTS} webhook endpoints")
    secret = new_secret()
    endpoint = WebhookEndpoint.create(
        public_id=public_id("we"),
        project=project,
        url=url,
        description=description or "",
        enabled_events=json.dumps(events),
        secret=box.encrypt(secret),
    )
    return endpoint, secret


def update_endpoint(
    endpoint: WebhookEndpoint, description: str | None = None, enabled_events: object = None
) -> WebhookEndpoint:
    """Change what the endpoint receives and its description (None: unchanged); raises EndpointError.

    New filters apply to the changes announced from now on; messages already queued are sent.
    """
    changes: dict[str, str] = {}
    if description is not None:
        check_description(description)
        changes["description"] = description
    if enabled_events is not None:
        changes["enabled_events"] = json.dumps(check_events(enabled_events))
    if changes:
        WebhookEndpoint.update(updated_at=utcnow(), **changes).where(WebhookEndpoint.id == endpoint.id).execute()
    return WebhookEndpoint.get_by_id(endpoint.id)


def endpoints_of(project: Project) -> list[WebhookEndpoint]:
    """The project's endpoints, oldest first. In a block."""
    return list(WebhookEndpoint.select().where(WebhookEndpoint.project == project).order_by(WebhookEndpoint.id))


def get_endpoint(project: Project, endpoint_id: str) -> WebhookEndpoint | None:
    """The project's endpoint with public id `endpoint_id`, or None. In a block."""
    return WebhookEndpoint.get_or_none(WebhookEndpoint.project == project, WebhookEndpoint.public_id == endpoint_id)


def delete_endpoint(project: Project, endpoint_id: str) -> bool:
    """Delete the endpoint and its deliveries; False when the project has no such endpoint."""
    return bool(
        WebhookEndpoint.delete()
        .where(WebhookEndpoint.project == project, WebhookEndpoint.public_id == endpoint_id)
        .execute()
    )


def enable_endpoint(endpoint: WebhookEndpoint) -> None:
    """Re-enable a disabled endpoint: its pending deliveries resume at once."""
    WebhookEndpoint.update(enabled=True, disabled_reason=None, failing_since=None, updated_at=utcnow()).where(
        WebhookEndpoint.id == endpoint.id
    ).execute()
    WebhookDelivery.update(next_attempt_ms=now_ms()).where(
        WebhookDelivery.endpoint == endpoint, WebhookDelivery.status == PENDING
    ).execute()
    wake()
