"""The sandbox API for scripts and CI (README "Sandbox API"): the clock, payments, cards, portal moves, prices
and Features on Products of a sandbox project's simulator, for its `pp_test_` API keys only.

It is part of our JSON API: ApiHandler's key, body and SPEC 3.1 error envelope; a missing object is 404
`not_found`, a refusal because of an object's state is 409 with a stable code.
"""

import re

from handlers.base import ApiError, ApiHandler, invalid, missing
from pulse import projects
from pulse.db import block, from_timestamp, isoformat
from pulse.models import Project
from sandbox import delivery, lifecycle, objects, store
from sandbox.core import StripeError

MAX_ADVANCE = 10 * 366 * 86400
PRICE_ID = re.compile(r"price_[A-Za-z0-9_]{1,200}")
LOOKUP_KEY = re.compile(r"[^\x00-\x1f\x7f/]{1,80}")
NAME = re.compile(r"[^\x00-\x1f\x7f]{1,80}")


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


def api_error(exc):
    """The simulator's refusal in our envelope: 404 not_found for a missing object (in the path or the body),
    409 with its stable code for a state conflict, else 400 invalid_field naming Stripe's parameter."""
    error = exc.body["error"]
    if exc.conflict:
        return ApiError(409, exc.conflict, error["message"])
    if exc.status == 404 or error.get("code") == "resource_missing":
        return ApiError(404, "not_found", error["message"])
    return ApiError(400, "invalid_field", error["message"], field=error.get("param"))


def whole(data, name, low, high):
    """data[name] as an integer in [low, high] (a JSON number: 3 or 3.0, as the API reads quantity), else 400."""
    value = data[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(name, f"{name} must be a whole number from {low} to {high}.")
    return value


def text(data, name, pattern, message):
    """data[name] when it is a string matching `pattern`, else 400 naming it."""
    value = data[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise invalid(name, message)
    return value


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

    def body(self, allowed, optional=False):
        """The JSON body, whose fields must be in `allowed` (400 "unknown parameter"); `optional`: {} for none."""
        if optional and not self.raw_body.strip():
            return {}
        return self.json_body(allowed=allowed)

    async def act(self, change):
        try:
            return await perform(self.config, self.settings["secret_box"], self.project, change)
        except StripeError as exc:
            raise api_error(exc) from None
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
    # ISO 8601 like the rest of our API; Stripe's own routes (/sandbox/<project>/v1) keep Unix seconds.
    now = isoformat(from_timestamp(sim.now()))
    return {"now": now, "advanced_seconds": sim.clock_offset, "after_retries": sim.after_retries}


class ClockHandler(SandboxApiHandler):
    def get(self):
        self.write_json(_clock(store.read(self.project)))


class AdvanceHandler(SandboxApiHandler):
    UNITS = {"days": 86400, "seconds": 1}

    async def post(self):
        data = self.body(set(self.UNITS))
        given = [name for name in self.UNITS if name in data]
        if not given:
            raise ApiError(422, "missing_field", "days (or seconds) is required", field="days")
        if len(given) > 1:
            raise invalid("seconds", "Give days or seconds, not both.")
        unit = self.UNITS[given[0]]
        total = whole(data, given[0], 1, MAX_ADVANCE // unit) * unit
        result, types, accepted = await self.act(lambda sim: (lifecycle.advance(sim, total), _clock(sim))[1])
        self.write_json(dict(result, events=types, delivered=accepted))


class SettingsHandler(SandboxApiHandler):
    async def post(self):
        data = self.body({"after_retries"})
        if "after_retries" not in data:
            raise missing("after_retries")
        value = data["after_retries"]
        if value not in lifecycle.AFTER_RETRIES:
            raise invalid("after_retries", f"after_retries must be one of {', '.join(lifecycle.AFTER_RETRIES)}.")

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


class SubscriptionActionHandler(SandboxApiHandler):
    async def post(self, sub_id, action):
        if action == "switch":
            data = self.body({"price"})
            if "price" not in data:
                raise missing("price")
            price = text(data, "price", PRICE_ID, "price must be a price id (price_…).")
            self.reply(await self.act(lambda sim: lifecycle.switch_price(sim, sub_id, price)))
            return
        if action not in lifecycle.PORTAL_ACTIONS:
            raise ApiError(404, "not_found", f"Unknown action; one of switch, {', '.join(lifecycle.PORTAL_ACTIONS)}.")
        self.body(set(), optional=True)
        self.reply(await self.act(lambda sim: lifecycle.PORTAL_ACTIONS[action](sim, sub_id)))


class PayHandler(SandboxApiHandler):
    async def post(self, session_id):
        data = self.body({"card"}, optional=True)
        card = data.get("card", "4242424242424242")
        if not isinstance(card, str) or not re.fullmatch(r"[0-9 ]{1,40}", card):
            raise invalid("card", "card must be a test card number (digits).")
        self.reply(await self.act(lambda sim: lifecycle.pay_checkout(sim, session_id, card)))


class CardHandler(SandboxApiHandler):
    async def post(self, customer_id):
        data = self.body({"card"})
        if "card" not in data:
            raise missing("card")
        if data["card"] not in lifecycle.CARD_STATES:
            raise invalid("card", f"card must be one of {', '.join(lifecycle.CARD_STATES)}.")
        self.reply(await self.act(lambda sim: lifecycle.set_card(sim, customer_id, data["card"])))


class PriceHandler(SandboxApiHandler):
    """Define a price before use (otherwise any price id becomes a monthly 20.00 USD price on first use)."""

    async def post(self):
        data = self.body({"id", "unit_amount", "interval", "currency"})
        if "id" not in data:
            raise missing("id")
        data = {"unit_amount": 2000, "interval": "month", "currency": "usd", **data}
        price_id = text(data, "id", PRICE_ID, "id must be a price id (price_…).")
        amount = whole(data, "unit_amount", 0, 99_999_999)
        if not isinstance(data["interval"], str) or data["interval"] not in objects.INTERVAL_DAYS:
            raise invalid("interval", "interval must be day, week, month or year.")
        currency = text(data, "currency", re.compile("[a-z]{3}"), "currency must be a 3-letter ISO code in lower case.")

        def change(sim):
            if price_id in sim.prices:
                message = f"Price {price_id} already exists (prices are immutable)."
                raise StripeError(400, objects.error_body(message), conflict="price_exists")
            return sim.add_price(price_id, data["interval"], amount, currency=currency)

        self.reply(await self.act(change))


class FeaturesHandler(SandboxApiHandler):
    """The Features (Stripe Entitlements) on Products: attach or detach them as the Dashboard does."""

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


class FeatureActionHandler(SandboxApiHandler):
    """Attach a Feature to a Product, or detach it."""

    async def post(self, action):
        data = self.body({"lookup_key", "price", "product", "name"})
        for name in ("lookup_key", "price"):
            if name not in data and (name != "price" or "product" not in data):
                raise ApiError(
                    422, "missing_field", f"{name} is required" + (" (or product)" * (name == "price")), field=name
                )
        if "price" in data and "product" in data:
            raise invalid("product", "Give price or product, not both.")
        key = text(data, "lookup_key", LOOKUP_KEY, "lookup_key must be 1-80 characters, no control characters or /.")
        if "price" in data:
            target = text(data, "price", PRICE_ID, "price must be a price id (price_…).")
        else:
            target = text(
                data, "product", re.compile(r"prod_[A-Za-z0-9_]{1,200}"), "product must be a product id (prod_…)."
            )
        name = None
        if data.get("name") is not None:
            name = text(data, "name", NAME, "name must be 1-80 characters, no control characters.")
        if action == "attach":
            self.reply(await self.act(lambda sim: sim.attach_feature(target, key, name)))
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
    (r"/sandbox/api/features/(attach|detach)", FeatureActionHandler),
]
