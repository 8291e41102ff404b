"""An in-memory Stripe HTTP server for tests, driven through the real stripe-python client.

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
"""

import asyncio
import itertools
import json
import logging
import secrets
from dataclasses import dataclass

import stripe
import tornado.httpserver
import tornado.netutil
import tornado.web

from pulse.billing import HTTPXClient
from tests import fake_stripe_objects as objects
from tests.fake_stripe_lifecycle import LifecycleMixin

log = logging.getLogger("tests.fake_stripe")

FAKE_SECRET_KEY = "sk_test_fake_" + "0" * 24
NEW_API_VERSION = "2025-08-27.basil"


@dataclass
class Fault:
    status: int
    kind: str  # "http" answers `status` with a Stripe error; "drop" processes, then closes without answering
    path: str | None
    message: str


class StripeError(Exception):
    def __init__(self, status, body, headers=None):
        super().__init__(body["error"]["message"])
        self.status, self.body, self.headers = status, body, headers or {}


class FakeStripe(LifecycleMixin):
    """State, faults and helpers; `url` once started."""

    def __init__(self):
        self.customers, self.sessions, self.portal_sessions, self.subscriptions = {}, {}, {}, {}
        self.prices = {}
        self.deleted_customers = {}  # id -> Stripe's tombstone {"id", "object": "customer", "deleted": true}
        self.requests = []
        self.responses = []  # (method, path, status), status None for a dropped connection
        self.latency = 0.0
        self.api_version = NEW_API_VERSION
        self.api_keys = None  # None accepts any sk_/rk_ key; else a set of the accepted ones
        self.faults = []
        self.idempotent = {}  # (api key, idempotency key) -> ((path, params), status, body), None while in flight
        self._seq = itertools.count()
        self.server = None
        self.url = None
        self.account = objects.account()

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
        return {"stripe_api_base": self.url, "stripe_secret_key": FAKE_SECRET_KEY, "stripe_timeout": 5.0,
                "stripe_max_retries": 2, **extra}

    def client(self, api_key=FAKE_SECRET_KEY, max_network_retries=0):
        """A real StripeClient aimed at this server (close with `await c._requestor._client.close_async()`)."""
        return stripe.StripeClient(api_key, base_addresses={"api": self.url}, max_network_retries=max_network_retries,
                                   http_client=HTTPXClient(timeout=5))

    # ------------------------------------------------------------ faults and inspection

    def fail_next(self, n=1, status=500, kind="http", path=None, message="An unexpected error occurred (fake)."):
        """The next `n` requests (to `path` prefix, if given) fail; kind "http" or "drop"."""
        assert kind in ("http", "drop"), kind
        self.faults.extend(Fault(status, kind, path, message) for _ in range(n))

    def calls(self, method=None, path=None):
        """Logged requests filtered by method and path prefix."""
        return [r for r in self.requests if (method is None or r[0] == method) and (path is None or r[1].startswith(path))]

    def subscription(self, sub_id, api_version=None):
        """The subscription as Stripe would show it now (in `api_version`'s shape, default the fake's)."""
        return objects.render_subscription(self.subscriptions[sub_id], api_version or self.api_version)

    def customer(self, cus_id):
        return objects.public(self.customers[cus_id])

    def session(self, session_id):
        return objects.public(self.sessions[session_id])

    def version(self, sub_id):
        """How many times a subscription changed (1 when created)."""
        return self.subscriptions[sub_id]["_version"]

    def event(self, type_, data_object, api_version=None, previous_attributes=None):
        """A Stripe Event object around `data_object` (signing is the webhook tests' job)."""
        return objects.event(type_, data_object, api_version or self.api_version, previous_attributes)

    # ------------------------------------------------------------ test-side state changes

    def add_price(self, price_id, interval="month", unit_amount=2000, **options):
        """A recurring price; options: interval_count, usage_type ("licensed"|"metered"), lookup_key, currency."""
        self.prices[price_id] = objects.price(price_id, interval, unit_amount, **options)
        return self.prices[price_id]

    def add_item(self, sub_id, price_id, quantity=1, first=False, legacy=False):
        """Add an item on an existing price (metered: quantity None); `first` lists it before the others
        (Stripe does not order items); `legacy` gives it only the old `plan` object, no `price`."""
        sub = self.subscriptions[sub_id]
        template = sub["items"]["data"][0]
        price_obj = self.prices[price_id]
        item = {k: v for k, v in template.items() if k not in ("price", "plan")}
        item.update(id=objects.new_id("si"), quantity=quantity, created=objects.now())
        if legacy:
            item["plan"] = objects.legacy_plan(price_obj)
        else:
            item["price"] = price_obj
        sub["items"]["data"].insert(0 if first else len(sub["items"]["data"]), item)
        sub["_version"] += 1
        return self.subscription(sub_id)

    def _price(self, price_id, interval):
        if price_id not in self.prices:
            self.add_price(price_id, interval)
        return self.prices[price_id]

    def complete_checkout(self, session_id, status="active", interval=None, trial_days=None, start=None):
        """The customer paid: create the subscription from the session (metadata from subscription_data)."""
        session = self.sessions[session_id]
        data = session["_subscription_data"]
        line = (session["_line_items"] or [{}])[0]
        wanted = interval or {"yearly": "year"}.get(session["metadata"].get("interval"), "month")
        price_obj = self._price(line.get("price") or "price_fake", wanted)
        trial = trial_days or data.get("trial_period_days")
        if trial and status == "active" and trial_days is None:
            status = "trialing"
        sub = objects.subscription(session["customer"], price_obj, status=status, metadata=data["metadata"],
                                   trial_days=trial, start=start)
        sub["_seq"] = next(self._seq)
        self.subscriptions[sub["id"]] = sub
        customer = self.customers.get(session["customer"]) or {}
        session.update(status="complete", payment_status="paid", subscription=sub["id"],
                       customer_details={"email": customer.get("email") or session.get("customer_email"),
                                         "name": None, "phone": None, "tax_exempt": "none", "address": None})
        return self.subscription(sub["id"])

    def set_subscription(self, sub_id, **changes):
        """Change a subscription like Stripe would (status, cancel_at_period_end, cancel_at, canceled_at,
        current_period_end, current_period_start, trial_end, ended_at, metadata, price, interval, quantity,
        pause_collection) on the first item; see add_item for more items."""
        sub = self.subscriptions[sub_id]
        item = sub["items"]["data"][0]
        for key, value in changes.items():
            if key in ("current_period_end", "current_period_start"):
                item[key] = value
            elif key in ("price", "interval"):
                # A swap to a known price keeps it as it is (interval_count, lookup_key...), as Stripe would.
                price_id = changes.get("price", item["price"]["id"])
                if "interval" in changes or price_id not in self.prices:
                    interval = changes.get("interval", item["price"]["recurring"]["interval"])
                    self.prices[price_id] = objects.price(price_id, interval)
                item["price"] = self.prices[price_id]
            elif key == "quantity":
                item["quantity"] = value
            elif key == "metadata":
                sub["metadata"] = objects.merge_metadata(sub["metadata"], value)
            elif key in sub:
                sub[key] = value
            else:
                raise KeyError(f"unknown subscription field {key!r}")
        if changes.get("status") == "canceled" and sub["canceled_at"] is None:
            sub["canceled_at"] = sub["ended_at"] = objects.now()
        sub["_version"] += 1
        return self.subscription(sub_id)

    def delete_customer(self, cus_id):
        """Delete a customer like Stripe: its live subscriptions are canceled at once, later reads show a
        tombstone, and any other use answers 404. Returns (canceled subscriptions, tombstone)."""
        canceled = [self.set_subscription(sub_id, status="canceled")
                    for sub_id, sub in list(self.subscriptions.items())
                    if sub["customer"] == cus_id and sub["status"] not in ("canceled", "incomplete_expired")]
        self.customers.pop(cus_id)
        self.deleted_customers[cus_id] = {"id": cus_id, "object": "customer", "deleted": True}
        return canceled, dict(self.deleted_customers[cus_id])

    # ------------------------------------------------------------ the API

    def _store(self, table, obj):
        obj["_seq"] = next(self._seq)
        table[obj["id"]] = obj
        return obj

    def _missing(self, kind, obj_id, param="id"):
        raise StripeError(404, objects.error_body(f"No such {kind}: '{obj_id}'", code="resource_missing", param=param))

    def _get(self, table, kind, obj_id, param="id"):
        if obj_id not in table:
            self._missing(kind, obj_id, param)
        return table[obj_id]

    def dispatch(self, method, path, params):
        """(status, body) for one API call; raises StripeError."""
        parts = path.strip("/").split("/")
        if parts == ["account"] and method == "GET":
            return self.account
        if parts[0] == "customers":
            if len(parts) == 1 and method == "POST":
                return objects.public(self._store(self.customers, objects.customer(params)))
            if len(parts) == 1 and method == "GET":
                found = [c for c in self.customers.values() if not params.get("email") or c["email"] == params["email"]]
                listing = objects.page(found, params, "/v1/customers")
                return dict(listing, data=[objects.public(c) for c in listing["data"]])
            if len(parts) == 2 and parts[1] in self.deleted_customers:
                if method == "GET":
                    return dict(self.deleted_customers[parts[1]])
                self._missing("customer", parts[1])
            if len(parts) == 2 and method == "DELETE":
                self._get(self.customers, "customer", parts[1])
                return self.delete_customer(parts[1])[1]
            if len(parts) == 2:
                cus = self._get(self.customers, "customer", parts[1])
                if method == "POST":
                    for key in ("email", "name", "description", "phone"):
                        if key in params:
                            cus[key] = params[key] or None
                    if "metadata" in params:
                        cus["metadata"] = objects.merge_metadata(cus["metadata"], params["metadata"] or {})
                return objects.public(cus)
        if parts[:2] == ["checkout", "sessions"]:
            if len(parts) == 2 and method == "POST":
                return objects.public(self._store(self.sessions, self._new_checkout(params)))
            if len(parts) == 3 and method == "GET":
                return objects.public(self._get(self.sessions, "checkout.session", parts[2]))
        if parts[:2] == ["billing_portal", "sessions"] and len(parts) == 2 and method == "POST":
            if not params.get("customer"):
                raise StripeError(400, objects.error_body("Missing required param: customer.", param="customer"))
            self._get(self.customers, "customer", params["customer"], param="customer")
            return objects.public(self._store(self.portal_sessions, objects.portal_session(params)))
        if parts[0] == "subscriptions" and method == "GET":
            if len(parts) == 2:
                return self.subscription(self._get(self.subscriptions, "subscription", parts[1])["id"])
            status = params.get("status")
            found = [s for s in self.subscriptions.values()
                     if (not params.get("customer") or s["customer"] == params["customer"])
                     and (status == "all" or (s["status"] == status if status else s["status"] != "canceled"))]
            listing = objects.page(found, params, "/v1/subscriptions")
            return dict(listing, data=[self.subscription(s["id"]) for s in listing["data"]])
        found = self.dispatch_lifecycle(method, parts, params)
        if found is not None:
            return found
        raise StripeError(404, objects.error_body(f"Unrecognized request URL ({method}: /v1/{path}).",
                                                  code="resource_missing"))

    def _new_checkout(self, params):
        if params.get("mode") not in ("payment", "setup", "subscription"):
            raise StripeError(400, objects.error_body("Missing required param: mode.", param="mode"))
        if params.get("mode") == "subscription" and not params.get("line_items"):
            raise StripeError(400, objects.error_body("Missing required param: line_items.", param="line_items"))
        if not params.get("success_url"):
            raise StripeError(400, objects.error_body("Missing required param: success_url.", param="success_url"))
        if len(params.get("client_reference_id") or "") > 200:
            raise StripeError(400, objects.error_body("Invalid string: must be at most 200 characters",
                                                      code="string_length_too_long", param="client_reference_id"))
        if params.get("customer"):
            self._get(self.customers, "customer", params["customer"], param="customer")
        trial = (params.get("subscription_data") or {}).get("trial_period_days")
        if trial is not None and not (trial.isdigit() and 1 <= int(trial) <= 730):
            raise StripeError(400, objects.error_body("Invalid trial_period_days.", code="parameter_invalid_integer",
                                                      param="subscription_data[trial_period_days]"))
        return objects.checkout_session(params)


class _Handler(tornado.web.RequestHandler):
    """Every /v1 path: auth, faults, latency, idempotency, then FakeStripe.dispatch."""

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
        key = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        if not key.startswith(("sk_", "rk_")) or (fake.api_keys is not None and key not in fake.api_keys):
            message = ("You did not provide an API key." if not key else
                       f"Invalid API Key provided: {key[:8]}{'*' * 8}{key[-4:]}")
            return self._answer(401, objects.error_body(message))
        idem = self.request.headers.get("Idempotency-Key") if self.request.method == "POST" else None
        if idem and fake.idempotent.get((key, idem), ()) is None:
            # Like Stripe: a key whose first request is still running answers 409 (clients retry these).
            return self._answer(409, objects.error_body(
                "There is currently another in-progress request using this Idempotent Key (that probably means "
                f"you submitted twice, and the other request is still going through): {idem}. Please try again "
                "later.", "idempotency_error"))
        if idem and (key, idem) not in fake.idempotent:
            fake.idempotent[(key, idem)] = None  # in flight while we wait out the latency
        try:
            if fake.latency:
                await asyncio.sleep(fake.latency)
        finally:
            if idem and fake.idempotent.get((key, idem), ()) is None:
                del fake.idempotent[(key, idem)]
        fault = next((f for f in fake.faults if f.path is None or ("/v1/" + path).startswith(f.path)), None)
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
        fake = self.fake
        idem = self.request.headers.get("Idempotency-Key") if self.request.method == "POST" else None
        slot = (api_key, idem)
        if idem and fake.idempotent.get(slot) is not None:
            stored = fake.idempotent[slot]
            if stored[0] != (path, params):
                return 400, objects.error_body("Keys for idempotent requests can only be used with the same "
                                               "parameters they were first used with.", "idempotency_error"), False
            return stored[1], stored[2], True
        try:
            status, body = 200, fake.dispatch(self.request.method, path, params)
        except StripeError as exc:
            status, body = exc.status, exc.body
        if idem:
            fake.idempotent[slot] = ((path, params), status, body)
        return status, body, False
