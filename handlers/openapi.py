"""GET /api/openapi.json: the OpenAPI 3.1 description of this API."""

from handlers.base import ApiHandler


class OpenApiHandler(ApiHandler):
    auth_required = False

    def get(self):
        self.write_json({"openapi": "3.1.0", "info": {"title": "PaymentPulse", "version": "0"}, "paths": {}})


default_handlers = [
    (r"/api/openapi\.json", OpenApiHandler),
]
