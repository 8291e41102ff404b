"""GET/POST /api/webhook-endpoints, GET/PATCH/DELETE /api/webhook-endpoints/{id}, deliveries and test events."""

from handlers.base import ApiError, ApiHandler, idempotent, invalid, missing
from pulse import endpoints, outbox
from pulse.db import block, isoformat, transaction
from pulse.models import WebhookDelivery
from web import ascii_int

_NO_ENDPOINT = "No webhook endpoint with this id in this project."
_FIELDS = {"url", "description", "enabled_events"}


def delivery_json(delivery):
    """One delivery as the API and the console show it."""
    return {
        "id": delivery.id,
        "webhook_id": delivery.message.public_id,
        "event_type": delivery.message.event_type,
        "endpoint": delivery.endpoint.public_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_latency_ms": delivery.last_latency_ms,
        "last_error": delivery.last_error,
        "last_attempt_at": isoformat(delivery.last_attempt_at),
        "delivered_at": isoformat(delivery.delivered_at),
        "created_at": isoformat(delivery.created_at),
    }


class EndpointsHandler(ApiHandler):
    def get(self):
        with block():
            rows = endpoints.endpoints_of(self.project)
        self.write_json({"data": [endpoints.endpoint_json(row) for row in rows]})

    @idempotent
    def post(self):
        data = self.json_body()
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise invalid(unknown[0], f"{unknown[0]} is not a field of this request")
        url = data.get("url")
        if url is None:
            raise missing("url")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise invalid("description", "description must be a string")
        events = data.get("enabled_events")
        if "enabled_events" in data and events is None:
            raise invalid("enabled_events", 'enabled_events must be a list of event types (or ["*"])')
        try:
            with block(), transaction():
                endpoint, secret = endpoints.create_endpoint(
                    self.project, url, self.settings["secret_box"], self.config, description, events
                )
        except endpoints.EndpointError as exc:
            raise invalid(exc.field, exc.message) from None
        self.write_json(dict(endpoints.endpoint_json(endpoint), secret=secret), status=201)


class _OneEndpoint(ApiHandler):
    """Base of the routes under one endpoint (each serves only its own methods: Allow stays exact)."""

    def _endpoint(self, endpoint_id):
        endpoint = endpoints.get_endpoint(self.project, endpoint_id)
        if endpoint is None:
            raise ApiError(404, "not_found", _NO_ENDPOINT)
        return endpoint


class EndpointHandler(_OneEndpoint):
    def get(self, endpoint_id):
        with block():
            endpoint = self._endpoint(endpoint_id)
            rows = outbox.deliveries_of(self.project, endpoint, limit=50)
        self.write_json(dict(endpoints.endpoint_json(endpoint), deliveries=[delivery_json(row) for row in rows]))

    def patch(self, endpoint_id):
        data = self.json_body(allowed=("description", "enabled_events"))
        for name, kind in (("description", str), ("enabled_events", list)):
            if name in data and not isinstance(data[name], kind):
                raise invalid(name, f"{name} must be a {'string' if kind is str else 'list of event types'}")
        try:
            with block(), transaction():
                endpoint = endpoints.update_endpoint(
                    self._endpoint(endpoint_id), data.get("description"), data.get("enabled_events")
                )
        except endpoints.EndpointError as exc:
            raise invalid(exc.field, exc.message) from None
        self.write_json(endpoints.endpoint_json(endpoint))

    def delete(self, endpoint_id):
        with block():
            if not endpoints.delete_endpoint(self.project, endpoint_id):
                raise ApiError(404, "not_found", _NO_ENDPOINT)
        self.write_json({"id": endpoint_id, "deleted": True})


class EndpointTestHandler(_OneEndpoint):
    @idempotent
    def post(self, endpoint_id):
        with block():
            with transaction():
                message = outbox.send_test(self.project, self._endpoint(endpoint_id))
        self.write_json({"webhook_id": message.public_id, "event_type": "webhook.test"}, status=202)


class EndpointEnableHandler(_OneEndpoint):
    @idempotent
    def post(self, endpoint_id):
        with block():
            with transaction():
                endpoints.enable_endpoint(self._endpoint(endpoint_id))
            endpoint = self._endpoint(endpoint_id)
        self.write_json(endpoints.endpoint_json(endpoint))


class DeliveryResendHandler(_OneEndpoint):
    @idempotent
    def post(self, endpoint_id, delivery_id):
        with block():
            with transaction():
                endpoint = self._endpoint(endpoint_id)
                number = ascii_int(delivery_id)
                delivery = (
                    None
                    if number is None
                    else WebhookDelivery.get_or_none(WebhookDelivery.id == number, WebhookDelivery.endpoint == endpoint)
                )
                if delivery is None:
                    raise ApiError(404, "not_found", "No such delivery for this endpoint.")
                outbox.resend(delivery)
                webhook_id = delivery.message.public_id
        self.write_json({"resent": True, "webhook_id": webhook_id}, status=202)


_ID = r"([A-Za-z0-9_]{1,64})"
default_handlers = [
    (r"/api/webhook-endpoints", EndpointsHandler),
    (rf"/api/webhook-endpoints/{_ID}", EndpointHandler),
    (rf"/api/webhook-endpoints/{_ID}/test", EndpointTestHandler),
    (rf"/api/webhook-endpoints/{_ID}/enable", EndpointEnableHandler),
    (rf"/api/webhook-endpoints/{_ID}/deliveries/([A-Za-z0-9_]{{1,40}})/resend", DeliveryResendHandler),
]
