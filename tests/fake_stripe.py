"""The Stripe simulator (sandbox/core.py) on its own port for tests, plus fault injection (test-only).

Usage (see the `fake_stripe` fixture in conftest.py):

    fake = FakeStripe(); fake.start()        # on the running/current IOLoop, 127.0.0.1:<random>
    client = fake.client()                   # a real stripe.StripeClient pointed at it
    fake.latency = 0.3                       # every request waits this long
    fake.fail_next(2, status=500)            # the next 2 requests fail (kind="drop": processed, then hung up)
    fake.requests                            # [(method, path, params, headers), ...]
    fake.responses                           # [(method, path, status or None if dropped), ...]
    sub = fake.complete_checkout(session_id, status="trialing")
    fake.set_subscription(sub["id"], status="past_due", cancel_at_period_end=True)
    canceled, tombstone = fake.delete_customer(cus_id)   # as the Dashboard does: its subscriptions end
    fake.api_version = "2024-06-20"          # old shape: billing period on the subscription, not the items
    fake.strict_prices = True                # unknown prices are refused (default: any id is a new price)
    fake.refuse("email", "maria@.example.test", "Invalid email address: maria@.example.test", code="email_invalid")
    fake.add_invoice(sub_id, amount_due=2000, status="paid")     # an invoice Stripe made earlier
    fake.attach_feature("price_monthly", "api_access")          # the simulator's: a Feature on the price's Product

State, API and Stripe's behaviour live in sandbox/ (the sandbox projects serve the same class);
only the transport, faults and request log are here.
"""

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass

import stripe
import tornado.httpserver
import tornado.netutil
import tornado.web

from pulse.billing import HTTPXClient
from sandbox import invoices, objects
from sandbox.core import NEW_API_VERSION, Simulator, StripeError  # noqa: F401  (tests import them from here)

log = logging.getLogger("tests.fake_stripe")

FAKE_SECRET_KEY = "sk_test_fake_" + "0" * 24


@dataclass
class Fault:
    status: int
    kind: str  # "http" answers `status` with a Stripe error; "drop" processes, then closes without answering
    path: str | None
    message: str
    method: str | None = None


class FakeStripe(Simulator):
    """The simulator with faults and a request log; `url` once started."""

    def __init__(self):
        super().__init__()
        self.requests = []
        self.responses = []  # (method, path, status), status None for a dropped connection
        self.latency = 0.0
        self.api_keys = None  # None accepts any sk_/rk_ key; else a set of the accepted ones
        self.faults = []
        self.refusals = []  # (param, value, message, code): Stripe's invalid_request_error for that value
        self.server = None
        self.url = None

    # ------------------------------------------------------------ lifecycle

    def start(self):
        app = tornado.web.Application([(r"/v1/(.*)", _Handler, {"fake": self})])
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.server = tornado.httpserver.HTTPServer(app)
        self.server.add_sockets(sockets)
        self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
        return self

    async def stop(self):
        if self.server:
            self.server.stop()
            await self.server.close_all_connections()
            self.server = None

    def config_overrides(self, **extra):
        """Settings that point PaymentPulse at this server (use as the `config_overrides` fixture)."""
        return {
            "stripe_api_base": self.url,
            "stripe_secret_key": FAKE_SECRET_KEY,
            "stripe_timeout": 5.0,
            "stripe_max_retries": 2,
            **extra,
        }

    def client(self, api_key=FAKE_SECRET_KEY, max_network_retries=0):
        """A real StripeClient aimed at this server (close with `await c._requestor._client.close_async()`)."""
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": self.url},
            max_network_retries=max_network_retries,
            http_client=HTTPXClient(timeout=5),
        )

    # ------------------------------------------------------------ faults and inspection

    def fail_next(
        self, n=1, status=500, kind="http", path=None, message="An unexpected error occurred (fake).", method=None
    ):
        """The next `n` requests (to `path` prefix and with `method`, if given) fail; kind "http" or "drop"."""
        assert kind in ("http", "drop"), kind
        self.faults.extend(Fault(status, kind, path, message, method) for _ in range(n))

    def refuse(self, param, value, message, code="parameter_invalid"):
        """Stripe answers 400 invalid_request_error naming `param` (e.g. "email", "success_url") for `value`."""
        self.refusals.append((param, value, message, code))

    def _check_refusals(self, params, prefix=""):
        for key, value in params.items():
            name = f"{prefix}[{key}]" if prefix else str(key)
            if isinstance(value, dict):
                self._check_refusals(value, name)
            elif isinstance(value, list):
                self._check_refusals(dict(enumerate(value)), name)
            else:
                for param, refused, message, code in self.refusals:
                    if param == name and value == refused:
                        raise StripeError(400, objects.error_body(message, code=code, param=param))

    def dispatch(self, method, path, params):
        """The simulator's answer, unless a refusal set up by the test applies."""
        if method == "POST" and isinstance(params, dict):
            self._check_refusals(params)
        return super().dispatch(method, path, params)

    def add_invoice(self, sub_id, amount_due=2000, status="paid", created=None):
        """An invoice Stripe made earlier (no events): one line of `amount_due`, finalized, paid if asked."""
        sub = self.subscriptions[sub_id]
        item = sub["items"]["data"][0]
        period = (item["current_period_start"], item["current_period_end"])
        lines = invoices.period_lines(sub, [(item["id"], item["price"], item["quantity"])], period)
        lines[0].update(amount=amount_due, subtotal=amount_due)
        with self.clock():
            inv = invoices.invoice(
                sub, billing_reason="subscription_cycle", lines=lines, period_start=period[0], period_end=period[1]
            )
            self.finalize(inv)
        if status == "paid":
            inv.update(status="paid", amount_paid=amount_due, amount_remaining=0, attempted=True, attempt_count=1)
        inv["created"] = created or inv["created"]
        return objects.public(self._store(self.invoices, inv))

    def calls(self, method=None, path=None):
        """Logged requests filtered by method and path prefix."""
        return [
            r for r in self.requests if (method is None or r[0] == method) and (path is None or r[1].startswith(path))
        ]


class _Handler(tornado.web.RequestHandler):
    """Every /v1 path: auth, faults, latency, then the simulator's idempotent call."""

    def initialize(self, fake):
        self.fake = fake
        self.request_id = "req_" + secrets.token_hex(7)

    def check_xsrf_cookie(self):
        pass

    async def get(self, path):
        await self._serve(path)

    async def post(self, path):
        await self._serve(path)

    async def delete(self, path):
        await self._serve(path)

    def _answer(self, status, body, headers=None):
        self.fake.responses.append((self.request.method, self.request.path, status))
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Request-Id", self.request_id)
        self.set_header("Stripe-Version", self.fake.api_version)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.finish(json.dumps(body))

    def _hang_up(self):
        self.fake.responses.append((self.request.method, self.request.path, None))
        self._finished = True  # we answer nothing: the client sees the connection drop
        self.request.connection.stream.close()

    async def _serve(self, path):
        fake = self.fake
        raw = self.request.body.decode() if self.request.method == "POST" else self.request.query
        params = objects.decode_form(raw)
        headers = dict(self.request.headers)
        fake.requests.append((self.request.method, "/v1/" + path, params, headers))
        auth = self.request.headers.get("Authorization", "")
        key = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        if not key.startswith(("sk_", "rk_")) or (fake.api_keys is not None and key not in fake.api_keys):
            message = (
                "You did not provide an API key."
                if not key
                else f"Invalid API Key provided: {key[:8]}{'*' * 8}{key[-4:]}"
            )
            return self._answer(401, objects.error_body(message))
        idem = self.request.headers.get("Idempotency-Key") if self.request.method == "POST" else None
        if idem and fake.idempotent.get((key, idem), ()) is None:
            # Like Stripe: a key whose first request is still running answers 409 (clients retry these).
            return self._answer(
                409,
                objects.error_body(
                    "There is currently another in-progress request using this Idempotent Key (that probably means "
                    f"you submitted twice, and the other request is still going through): {idem}. Please try again "
                    "later.",
                    "idempotency_error",
                ),
            )
        if idem and (key, idem) not in fake.idempotent:
            fake.idempotent[(key, idem)] = None  # in flight while we wait out the latency
        try:
            if fake.latency:
                await asyncio.sleep(fake.latency)
        finally:
            if idem and fake.idempotent.get((key, idem), ()) is None:
                del fake.idempotent[(key, idem)]
        fault = next(
            (
                f
                for f in fake.faults
                if (f.path is None or ("/v1/" + path).startswith(f.path)) and f.method in (None, self.request.method)
            ),
            None,
        )
        if fault:
            fake.faults.remove(fault)
            if fault.kind == "http":
                kind = "rate_limit_error" if fault.status == 429 else "api_error"
                return self._answer(fault.status, objects.error_body(fault.message, kind))
        status, body, replayed = self._idempotent_call(key, path, params)
        if fault:  # a "drop": Stripe did the work, the response got lost on the way back
            return self._hang_up()
        self._answer(status, body, {"Idempotent-Replayed": "true"} if replayed else None)

    def _idempotent_call(self, api_key, path, params):
        idem = self.request.headers.get("Idempotency-Key") if self.request.method == "POST" else None
        return self.fake.handle(self.request.method, path, params, api_key, idem)
