"""The simulator's state and its Stripe API: one Stripe account's objects, the calls PaymentPulse makes.

One class serves both the sandbox projects (state loaded from and saved to the database per call,
sandbox/store.py) and the tests (tests/fake_stripe.py keeps it in memory and adds fault injection).
Everything that changes an object the way Stripe would also queues Stripe's events in `outbox`, in
Stripe's order; the sandbox delivers them signed (sandbox/delivery.py), the tests ignore them.
"""

import itertools

from sandbox import objects
from sandbox.entitlements import Entitlements
from sandbox.invoices import Invoices
from sandbox.objects import StripeError, invalid
from sandbox.subscriptions import Subscriptions

NEW_API_VERSION = "2025-08-27.basil"
OUTBOX_MAX = 1000  # undelivered events kept (the tests never drain theirs)
IDEMPOTENCY_MAX = 500  # remembered idempotency keys (Stripe keeps them 24 hours)
LIVE_STATUSES = ("trialing", "active", "past_due", "unpaid", "paused", "incomplete")


def not_open(session):
    """Paying a session that is no longer open: Stripe's refusal, a state conflict for the sandbox API."""
    return invalid(
        f"This Checkout Session is {session['status']}.",
        code="checkout_session_not_open",
        conflict="checkout_session_not_open",
    )


class Simulator(Subscriptions, Invoices, Entitlements):
    """One Stripe account: tables of objects by id, plus the clock offset, settings and pending events."""

    TABLES = (
        "customers",
        "sessions",
        "portal_sessions",
        "subscriptions",
        "prices",
        "invoices",
        "deleted_customers",
        "products",
        "features",
        "product_features",
    )

    def __init__(self):
        self.customers, self.sessions, self.portal_sessions, self.subscriptions = {}, {}, {}, {}
        self.prices, self.invoices = {}, {}
        self.products, self.features, self.product_features = {}, {}, {}  # Entitlements (sandbox/entitlements.py)
        self.deleted_customers = {}  # id -> Stripe's tombstone {"id", "object": "customer", "deleted": true}
        self.api_version = NEW_API_VERSION
        self.idempotent = {}  # (api key, idempotency key) -> ((path, params), status, body), None while in flight
        self._seq = itertools.count()
        self.account = objects.account()
        self.clock_offset = 0  # seconds this account's clock runs ahead (test clocks)
        # What Stripe's "Manage failed payments" settings do once every retry failed: "canceled" (Stripe's
        # default), "unpaid", or "past_due" (leave it).
        self.after_retries = "canceled"
        self.strict_prices = False  # True: unknown price ids are refused, as Stripe does (default: made on use)
        self.outbox = []
        self.page_base = None  # hosted pages' URL prefix; None: Stripe's own URLs (tests)

    # ------------------------------------------------------------ persistence (sandbox/store.py)

    def to_state(self):
        """Everything as JSON-ready data."""
        state = {name: getattr(self, name) for name in self.TABLES}
        state.update(
            api_version=self.api_version,
            account=self.account,
            clock_offset=self.clock_offset,
            after_retries=self.after_retries,
            outbox=self.outbox,
            seq=next(self._seq),
            idempotent=[[list(slot), list(value)] for slot, value in self.idempotent.items() if value is not None][
                -IDEMPOTENCY_MAX:
            ],
        )
        return state

    @classmethod
    def from_state(cls, state):
        sim = cls()
        for name in cls.TABLES:
            setattr(sim, name, state.get(name, {}))
        sim.api_version, sim.account = state["api_version"], state["account"]
        sim.clock_offset, sim.after_retries = state["clock_offset"], state["after_retries"]
        sim.outbox = state.get("outbox", [])
        sim._seq = itertools.count(state.get("seq", 0))
        sim.idempotent = {
            tuple(slot): ((value[0][0], value[0][1]), value[1], value[2]) for slot, value in state.get("idempotent", [])
        }
        return sim

    def clock(self):
        """Context: objects built meanwhile carry this account's time."""
        return objects.clock(self.clock_offset)

    def now(self):
        with self.clock():
            return objects.now()

    # ------------------------------------------------------------ reading

    def subscription(self, sub_id, api_version=None):
        """The subscription as Stripe would show it now (in `api_version`'s shape, default the account's)."""
        return objects.render_subscription(self.subscriptions[sub_id], api_version or self.api_version)

    def customer(self, cus_id):
        return objects.public(self.customers[cus_id])

    def session(self, session_id):
        return objects.public(self.sessions[session_id])

    def version(self, sub_id):
        """How many times a subscription changed (1 when created)."""
        return self.subscriptions[sub_id]["_version"]

    def event(self, type_, data_object, api_version=None, previous_attributes=None):
        """A Stripe Event object around `data_object` (signing is the deliverer's job)."""
        return objects.event(type_, data_object, api_version or self.api_version, previous_attributes)

    def emit(self, type_, data_object, previous_attributes=None):
        """Queue Stripe's event for a change just made."""
        with self.clock():
            self.outbox.append(self.event(type_, data_object, previous_attributes=previous_attributes))
        del self.outbox[:-OUTBOX_MAX]

    def emit_subscription(self, type_, sub_id, before=None):
        """customer.subscription.* with previous_attributes: the top-level fields that changed since `before`."""
        after = self.subscription(sub_id)
        previous = None
        if before is not None:
            previous = {key: before.get(key) for key in after if key != "items" and before.get(key) != after[key]}
            if before["items"] != after["items"]:
                previous["items"] = before["items"]
        self.emit(type_, after, previous)

    # ------------------------------------------------------------ state changes (Stripe's own doing)

    def add_price(self, price_id, interval="month", unit_amount=2000, **options):
        """A recurring price; options: interval_count, usage_type ("licensed"|"metered"), lookup_key, currency."""
        self.prices[price_id] = objects.price(price_id, interval, unit_amount, **options)
        return self.prices[price_id]

    def _price(self, price_id, interval):
        # Any price id works in the simulator: an unknown one becomes a recurring price on first use.
        if price_id not in self.prices:
            self.add_price(price_id, interval)
        return self.prices[price_id]

    def session_price(self, session_id):
        """The price a Checkout Session sells (made on first use, interval from PaymentPulse's metadata)."""
        session = self.sessions[session_id]
        line = (session["_line_items"] or [{}])[0]
        named = session["metadata"].get("interval")
        interval = {"yearly": "year", "weekly": "week", "daily": "day"}.get(named, "month")
        return self._price(line.get("price") or "price_fake", interval)

    def complete_checkout(self, session_id, status="active", interval=None, trial_days=None, start=None):
        """The customer paid: create the subscription from the session (metadata from subscription_data).

        Like Stripe, only an open session can be paid: an expired or completed one raises StripeError."""
        session = self._get(self.sessions, "checkout.session", session_id)
        if session["status"] != "open":
            raise not_open(session)
        data = session["_subscription_data"]
        if interval:
            line = (session["_line_items"] or [{}])[0]
            price_obj = self._price(line.get("price") or "price_fake", interval)
        else:
            price_obj = self.session_price(session_id)
        trial = trial_days or data.get("trial_period_days")
        if trial and status == "active" and trial_days is None:
            status = "trialing"
        with self.clock():
            sub = objects.subscription(
                session["customer"], price_obj, status=status, metadata=data["metadata"], trial_days=trial, start=start
            )
        sub["_seq"] = next(self._seq)
        self.subscriptions[sub["id"]] = sub
        customer = self.customers.get(session["customer"]) or {}
        session.update(
            status="complete",
            payment_status="paid",
            subscription=sub["id"],
            customer_details={
                "email": customer.get("email") or session.get("customer_email"),
                "name": None,
                "phone": None,
                "tax_exempt": "none",
                "address": None,
            },
        )
        return self.subscription(sub["id"])

    def delete_customer(self, cus_id):
        """Delete a customer like Stripe: its live subscriptions are canceled at once, later reads show a
        tombstone, and any other use answers 404. Returns (canceled subscriptions, tombstone)."""
        canceled = []
        for sub_id, sub in list(self.subscriptions.items()):
            if sub["customer"] == cus_id and sub["status"] not in ("canceled", "incomplete_expired"):
                before = self.subscription(sub_id)
                canceled.append(self.set_subscription(sub_id, status="canceled"))
                self.emit_subscription("customer.subscription.deleted", sub_id, before)
        self.customers.pop(cus_id)
        self.deleted_customers[cus_id] = {"id": cus_id, "object": "customer", "deleted": True}
        self.emit("customer.deleted", dict(self.deleted_customers[cus_id]))
        return canceled, dict(self.deleted_customers[cus_id])

    def run(self, change):
        """`change(self)`, then the entitlement summaries of the customers whose active features it moved."""
        before = self.entitlement_snapshot()
        result = change(self)
        with self.clock():
            self.announce_entitlements(before)
        return result

    # ------------------------------------------------------------ the API

    def handle(self, method, path, params, api_key, idempotency_key=None):
        """(status, body, replayed) for one call, honouring Idempotency-Key as Stripe does."""
        slot = (api_key, idempotency_key)
        if idempotency_key and self.idempotent.get(slot) is not None:
            stored = self.idempotent[slot]
            if tuple(stored[0]) != (path, params):
                return (
                    400,
                    objects.error_body(
                        "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with.",
                        "idempotency_error",
                    ),
                    False,
                )
            return stored[1], stored[2], True
        try:
            with self.clock():
                status, body = 200, self.dispatch(method, path, params)
        except StripeError as exc:
            status, body = exc.status, exc.body
        # Like Stripe, a request that failed validation saves no idempotent result: a corrected retry runs.
        if idempotency_key and not (status == 400 and body["error"].get("type") == "invalid_request_error"):
            self.idempotent[slot] = ((path, params), status, body)
        return status, body, False

    def _store(self, table, obj):
        obj["_seq"] = next(self._seq)
        table[obj["id"]] = obj
        return obj

    def _missing(self, kind, obj_id, param="id"):
        raise objects.missing(kind, obj_id, param)

    def _get(self, table, kind, obj_id, param="id"):
        if obj_id not in table:
            self._missing(kind, obj_id, param)
        return table[obj_id]

    def dispatch(self, method, path, params):
        """The body of one API call; raises StripeError."""
        parts = path.strip("/").split("/")
        if parts == ["account"] and method == "GET":
            return self.account
        if parts[0] == "customers":
            return self._customers(method, parts, params)
        if parts[:2] == ["checkout", "sessions"]:
            return self._checkout_sessions(method, parts, params)
        if parts[:2] == ["billing_portal", "sessions"] and len(parts) == 2 and method == "POST":
            if not params.get("customer"):
                raise invalid("Missing required param: customer.", "customer")
            self._get(self.customers, "customer", params["customer"], param="customer")
            return objects.public(self._store(self.portal_sessions, objects.portal_session(params, self.page_base)))
        if parts[0] == "subscriptions":
            return self._subscriptions(method, parts, params)
        if parts[0] == "prices" and method == "GET":
            if len(parts) == 2:
                return self._get(self.prices, "price", parts[1])
            keys = params.get("lookup_keys") or []
            found = [p for p in self.prices.values() if not keys or p.get("lookup_key") in keys]
            return objects.page(found, params, "/v1/prices")
        if parts[0] == "invoices":
            return self._invoices(method, parts, params)
        if parts[0] == "entitlements":
            return self._entitlements(method, parts, params)
        if parts[0] == "products":
            return self._products(method, parts, params)
        raise objects.unrecognized(method, parts)

    def _customers(self, method, parts, params):
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
        raise objects.unrecognized(method, parts)

    def _checkout_sessions(self, method, parts, params):
        if len(parts) == 2 and method == "POST":
            return objects.public(self._store(self.sessions, self._new_checkout(params)))
        if len(parts) == 2 and method == "GET":
            found = [
                c
                for c in self.sessions.values()
                if all(not params.get(k) or c[k] == params[k] for k in ("customer", "status", "subscription"))
            ]
            listing = objects.page(found, params, "/v1/checkout/sessions")
            return dict(listing, data=[objects.public(c) for c in listing["data"]])
        if len(parts) == 3 and method == "GET":
            return objects.public(self._get(self.sessions, "checkout.session", parts[2]))
        if len(parts) == 4 and parts[3] == "expire" and method == "POST":
            session = self._get(self.sessions, "checkout.session", parts[2])
            if session["status"] != "open":
                raise invalid(
                    f'Only Checkout Sessions with a status in ["open"] can be expired. This Checkout '
                    f'Session has a status of "{session["status"]}".',
                    code="checkout_session_not_open",
                    conflict="checkout_session_not_open",
                )
            session.update(status="expired", url=None)
            self.emit("checkout.session.expired", objects.public(session))
            return objects.public(session)
        raise objects.unrecognized(method, parts)

    def _new_checkout(self, params):
        if params.get("mode") not in ("payment", "setup", "subscription"):
            raise invalid("Missing required param: mode.", "mode")
        if params.get("mode") == "subscription" and not params.get("line_items"):
            raise invalid("Missing required param: line_items.", "line_items")
        if not params.get("success_url"):
            raise invalid("Missing required param: success_url.", "success_url")
        if params.get("customer") and params["customer"] not in self.customers:
            self._missing("customer", params["customer"], param="customer")
        for index, line in enumerate(params.get("line_items") or []):
            if self.strict_prices and line.get("price") not in self.prices:
                self._missing("price", line.get("price"), param=f"line_items[{index}][price]")
        trial = (params.get("subscription_data") or {}).get("trial_period_days")
        if trial is not None and not (trial.isdigit() and 1 <= int(trial) <= 730):
            raise invalid(
                "Invalid trial_period_days.", "subscription_data[trial_period_days]", "parameter_invalid_integer"
            )
        return objects.checkout_session(params, self.page_base)
