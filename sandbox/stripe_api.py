"""Stripe's HTTP API at /sandbox/{project}/v1/...: what stripe-python calls for a sandbox project.

It answers only the sandbox project's own simulator key (`sk_test_sandbox_…`), which billing routes here
and nowhere else, in Stripe's shapes and error objects.
"""

import asyncio
import hmac
import json
import secrets

import tornado.web

from pulse import projects
from sandbox import delivery, objects, store
from sandbox.api import page_base, sandbox_project

_background: set = set()


class StripeApiHandler(tornado.web.RequestHandler):
    """Stripe's HTTP API for one sandbox project, as stripe-python calls it."""

    def initialize(self):
        self.request_id = "req_" + secrets.token_hex(7)

    def check_xsrf_cookie(self):
        """Authenticated by the Stripe key in the Authorization header, not a cookie."""

    def _answer(self, status, body, replayed=False):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Request-Id", self.request_id)
        self.set_header("Cache-Control", "no-store")
        if replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.finish(json.dumps(body))

    async def get(self, project_id, path):
        await self._serve(project_id, path)

    async def post(self, project_id, path):
        await self._serve(project_id, path)

    async def delete(self, project_id, path):
        await self._serve(project_id, path)

    async def _serve(self, project_id, path):
        auth = self.request.headers.get("Authorization", "")
        key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        project = sandbox_project(project_id)
        box = self.settings["secret_box"]
        expected = projects.stripe_secret_key(project, box) if project is not None else None
        # Only the project's own simulator key: a live project's key (or another sandbox's) gets Stripe's 401.
        if not key or not expected or not hmac.compare_digest(key.encode(), expected.encode()):
            message = (
                "You did not provide an API key."
                if not key
                else f"Invalid API Key provided: {key[:8]}{'*' * 8}{key[-4:]}"
            )
            return self._answer(401, objects.error_body(message))
        method = self.request.method
        raw = self.request.body.decode("utf-8", "replace") if method == "POST" else self.request.query
        params = objects.decode_form(raw)
        idem = self.request.headers.get("Idempotency-Key") if method == "POST" else None
        if method == "GET":  # reads change nothing: no write, no optimistic-lock contention with the changes
            sim = store.read(project)
            sim.page_base = page_base(self.settings["config"], project)
            return self._answer(*sim.handle(method, path, params, key))
        try:
            (status, body, replayed), events = store.run(
                project,
                lambda sim: sim.handle(method, path, params, key, idem),
                page_base(self.settings["config"], project),
            )
        except store.Busy:
            return self._answer(
                409,
                objects.error_body(
                    "This object cannot be accessed right now because another "
                    "API request or Stripe process is currently accessing it.",
                    code="lock_timeout",
                ),
            )
        if events:  # answered first: PaymentPulse's own call must not wait for its webhooks
            url = f"{projects.local_base(self.settings['config'])}/api/webhook/{project.public_id}"
            task = asyncio.ensure_future(delivery.deliver(url, projects.webhook_secret(project, box), events))
            _background.add(task)
            task.add_done_callback(_background.discard)
        self._answer(status, body, replayed)


default_handlers = [
    (r"/sandbox/([A-Za-z0-9_-]{1,40})/v1/(.*)", StripeApiHandler),
]
