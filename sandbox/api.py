"""The simulator over HTTP: Stripe's API at /sandbox/{project}/v1/..., and the sandbox API for scripts.

Stripe's API answers only the sandbox project's own simulator key (`sk_test_sandbox_…`), which billing
routes here and nowhere else; the sandbox API (clock, payments, cards, portal moves, prices, Features on
Products: README "Sandbox API") answers only a sandbox project's `pp_test_` API keys.
"""

import asyncio
import hmac
import json
import re
import secrets

import tornado.web

from handlers.base import ApiError, ApiHandler
from pulse import projects
from pulse.db import block
from pulse.models import Project
from sandbox import delivery, lifecycle, objects, store
from sandbox.core import StripeError

MAX_ADVANCE = 10 * 366 * 86400
_background: set = set()


def page_base(config, project):
    """The hosted pages' URL prefix: this server, as the browser on this machine reaches it."""
    return f"{projects.local_base(config)}/sandbox/{project.public_id}"


async def perform(config, box, project, change):
    """Run `change(simulator)` on the project's account, then deliver its events (first attempts awaited).
    Returns (result, event types, how many were accepted)."""
    result, events = store.run(project, change, page_base(config, project))
    accepted = await delivery.deliver(
        f"{projects.local_base(config)}/api/webhook/{project.public_id}", projects.webhook_secret(project, box), events
    )
    return result, [event["type"] for event in events], accepted


def sandbox_project(public_id):
    """The sandbox project with this id, or None (unknown, or a live project)."""
    with block():
        project = Project.get_or_none(Project.public_id == public_id)
    return project if project is not None and project.sandbox else None


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


# ---------------------------------------------------------------- the sandbox API (pp_test_ keys)


class SandboxApiHandler(ApiHandler):
    """Base of /sandbox/api/*: a sandbox project's API key, JSON in and out, errors in the API envelope."""

    async def prepare(self):
        await super().prepare()
        if self._finished:
            return
        if not self.project.sandbox:
            raise ApiError(
                403,
                "not_a_sandbox",
                "This API key belongs to a live project; the sandbox API answers only sandbox projects' pp_test_ keys.",
            )

    async def act(self, change):
        try:
            return await perform(self.config, self.settings["secret_box"], self.project, change)
        except StripeError as exc:
            error = exc.body["error"]
            code = "not_found" if exc.status == 404 else "invalid_request"
            raise ApiError(exc.status if exc.status in (400, 404) else 400, code, error["message"]) from None
        except lifecycle.Declined as exc:
            raise ApiError(402, "card_declined", str(exc)) from None
        except store.Busy:
            raise ApiError(409, "busy", "The sandbox is busy with another change; try again.") from None

    def reply(self, done, **extra):
        result, types, accepted = done
        self.write_json(
            dict(extra, **({"result": result} if result is not None else {}), events=types, delivered=accepted)
        )


def _clock(sim):
    return {"now": sim.now(), "advanced_seconds": sim.clock_offset, "after_retries": sim.after_retries}


class ClockHandler(SandboxApiHandler):
    def get(self):
        self.write_json(_clock(store.read(self.project)))


class AdvanceHandler(SandboxApiHandler):
    async def post(self):
        data = self.json_body()
        seconds = data.get("seconds", 0)
        days = data.get("days", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (seconds, days)):
            raise ApiError(400, "invalid_field", "seconds and days must be whole numbers, 0 or more.")
        total = seconds + days * 86400
        if not 0 < total <= MAX_ADVANCE:
            raise ApiError(400, "invalid_field", "Advance by 1 second to 10 years (give seconds or days).")
        result, types, accepted = await self.act(lambda sim: (lifecycle.advance(sim, total), _clock(sim))[1])
        self.write_json(dict(result, events=types, delivered=accepted))


class SettingsHandler(SandboxApiHandler):
    async def post(self):
        value = self.json_body().get("after_retries")
        if value not in lifecycle.AFTER_RETRIES:
            raise ApiError(400, "invalid_field", f"after_retries must be one of {', '.join(lifecycle.AFTER_RETRIES)}.")

        def change(sim):
            sim.after_retries = value
            return _clock(sim)

        self.reply(await self.act(change))


class SubscriptionsHandler(SandboxApiHandler):
    def get(self):
        sim = store.read(self.project)
        with sim.clock():
            subs = [
                sim.subscription(sub_id)
                for sub_id in sorted(sim.subscriptions, key=lambda s: sim.subscriptions[s]["_seq"], reverse=True)
            ]
        self.write_json({"data": subs})


PORTAL_ACTIONS = {
    "cancel": lifecycle.cancel_at_period_end,
    "resume": lifecycle.resume,
    "pause_collection": lifecycle.pause_collection,
    "unpause_collection": lambda sim, sub_id: lifecycle.pause_collection(sim, sub_id, paused=False),
    "cancel_now": lambda sim, sub_id: sim.cancel_now(sub_id),
}


class SubscriptionActionHandler(SandboxApiHandler):
    async def post(self, sub_id, action):
        data = self.json_body() if self.raw_body.strip() else {}
        if action == "switch":
            price = data.get("price")
            if not isinstance(price, str) or not price.startswith("price_"):
                raise ApiError(400, "invalid_field", "price must be a price id (price_…).")
            self.reply(await self.act(lambda sim: lifecycle.switch_price(sim, sub_id, price)))
            return
        if action not in PORTAL_ACTIONS:
            raise ApiError(404, "not_found", f"Unknown action; one of switch, {', '.join(PORTAL_ACTIONS)}.")
        self.reply(await self.act(lambda sim: PORTAL_ACTIONS[action](sim, sub_id)))


class PayHandler(SandboxApiHandler):
    async def post(self, session_id):
        data = self.json_body() if self.raw_body.strip() else {}
        card = data.get("card", "4242424242424242")
        if not isinstance(card, str):
            raise ApiError(400, "invalid_field", "card must be a test card number.")
        self.reply(await self.act(lambda sim: lifecycle.pay_checkout(sim, session_id, card)))


class CardHandler(SandboxApiHandler):
    async def post(self, customer_id):
        card = self.json_body().get("card")
        self.reply(await self.act(lambda sim: lifecycle.set_card(sim, customer_id, card)))


class PriceHandler(SandboxApiHandler):
    """Define a price before use (otherwise any price id becomes a monthly 20.00 USD price on first use)."""

    async def post(self):
        data = self.json_body()
        price_id, amount = data.get("id"), data.get("unit_amount", 2000)
        interval, currency = data.get("interval", "month"), data.get("currency", "usd")
        if not isinstance(price_id, str) or not re.fullmatch(r"price_[A-Za-z0-9_]{1,200}", price_id):
            raise ApiError(400, "invalid_field", "id must be a price id (price_…).", "id")
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount <= 99_999_999:
            raise ApiError(400, "invalid_field", "unit_amount must be a whole number of minor units.", "unit_amount")
        if interval not in objects.INTERVAL_DAYS:
            raise ApiError(400, "invalid_field", "interval must be day, week, month or year.", "interval")
        if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
            raise ApiError(400, "invalid_field", "currency must be a 3-letter ISO code in lower case.", "currency")

        def change(sim):
            if price_id in sim.prices:
                raise StripeError(400, objects.error_body(f"Price {price_id} already exists (prices are immutable)."))
            return sim.add_price(price_id, interval, amount, currency=currency)

        self.reply(await self.act(change))


class FeaturesHandler(SandboxApiHandler):
    """A Feature (Stripe Entitlements) on a price's Product: attach or detach it, as the Dashboard does."""

    def get(self):
        sim = store.read(self.project)
        prices = {}
        for price in sim.prices.values():
            prices.setdefault(price["product"], []).append(price["id"])
        attached = sorted(sim.product_features.values(), key=lambda a: a["_seq"])
        self.write_json(
            {
                "data": [
                    {
                        "product": a["_product"],
                        "prices": sorted(prices.get(a["_product"], [])),
                        "lookup_key": a["entitlement_feature"]["lookup_key"],
                        "name": a["entitlement_feature"]["name"],
                    }
                    for a in attached
                ]
            }
        )

    async def post(self, action):
        data = self.json_body()
        key, target = data.get("lookup_key"), data.get("price") or data.get("product")
        if not isinstance(key, str) or not re.fullmatch(r"[^\x00-\x1f\x7f/]{1,80}", key):
            raise ApiError(400, "invalid_field", "lookup_key must be 1-80 characters.", "lookup_key")
        if not isinstance(target, str) or not re.fullmatch(r"(price|prod)_[A-Za-z0-9_]{1,200}", target):
            raise ApiError(400, "invalid_field", "Give price (price_…) or product (prod_…).", "price")
        if action == "attach":
            self.reply(await self.act(lambda sim: sim.attach_feature(target, key, data.get("name") or None)))
        else:
            self.reply(await self.act(lambda sim: sim.detach_feature(target, key)))


SID = r"([A-Za-z0-9_]{1,255})"
default_handlers = [
    (r"/sandbox/api/clock", ClockHandler),
    (r"/sandbox/api/clock/advance", AdvanceHandler),
    (r"/sandbox/api/settings", SettingsHandler),
    (r"/sandbox/api/subscriptions", SubscriptionsHandler),
    (r"/sandbox/api/subscriptions/" + SID + r"/(\w+)", SubscriptionActionHandler),
    (r"/sandbox/api/checkout_sessions/" + SID + r"/pay", PayHandler),
    (r"/sandbox/api/customers/" + SID + r"/card", CardHandler),
    (r"/sandbox/api/prices", PriceHandler),
    (r"/sandbox/api/features", FeaturesHandler),
    (r"/sandbox/api/features/(attach|detach)", FeaturesHandler),
    (r"/sandbox/([A-Za-z0-9_-]{1,40})/v1/(.*)", StripeApiHandler),
]
