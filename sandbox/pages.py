"""The simulator's hosted pages: Checkout (Pay, Decline, Cancel) and the Customer Portal.

Like Stripe's, a page is reached through the unguessable session id in its URL, not a sign-in.
"""

from datetime import UTC, datetime
from urllib.parse import urlencode

import tornado.web

from pulse import plans
from pulse.db import block
from sandbox import lifecycle, objects, store
from sandbox.api import perform, sandbox_project
from sandbox.core import StripeError

TEST_CARDS = [
    ("4242424242424242", "4242 4242 4242 4242 (pays, and so do renewals)"),
    ("4000000000000341", "4000 0000 0000 0341 (pays now, renewals fail)"),
]
DECLINED_CARD = "4000000000000002"


class PageHandler(tornado.web.RequestHandler):
    def prepare(self):
        self.project = sandbox_project(self.path_args[0])
        if self.project is None:
            raise tornado.web.HTTPError(404)
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Frame-Options", "DENY")

    def render_page(self, name, status=200, **values):
        self.set_status(status)
        template = self.settings["jinja_env"].get_template(name)
        self.finish(template.render(xsrf_form_html=self.xsrf_form_html, project=self.project, **values))

    def write_error(self, status_code, **kwargs):
        self.finish(
            f"<!doctype html><title>{status_code}</title><h1>{status_code}</h1><p>This sandbox page "
            "does not exist (or no longer does).</p>"
        )

    async def act(self, change):
        return await perform(self.settings["config"], self.settings["secret_box"], self.project, change)


def _date(ts):
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _money(amount, currency):
    return f"{(amount or 0) / 100:,.2f} {(currency or 'usd').upper()}"


class CheckoutPage(PageHandler):
    def show(self, session_id, status=200, error=""):
        sim = store.read(self.project)
        session = sim.sessions.get(session_id)
        if session is None:
            raise tornado.web.HTTPError(404)
        price = sim.prices.get(((session["_line_items"] or [{}])[0]).get("price") or "")
        recurring = (price or {}).get("recurring") or {
            "interval": session["metadata"].get("interval", "month"),
            "interval_count": 1,
        }
        self.render_page(
            "sandbox/checkout.html",
            status=status,
            session=objects.public(session),
            plan_slug=session["metadata"].get("plan_slug", ""),
            price_id=((session["_line_items"] or [{}])[0]).get("price", ""),
            amount=_money((price or {}).get("unit_amount", 2000), (price or {}).get("currency")),
            interval=recurring,
            trial_days=session["_subscription_data"].get("trial_period_days"),
            cards=TEST_CARDS,
            declined_card=DECLINED_CARD,
            error=error,
        )

    def get(self, project_id, session_id):
        sim = store.read(self.project)
        session = sim.sessions.get(session_id)
        line = ((session or {}).get("_line_items") or [{}])[0]
        if session is not None and line.get("price") not in sim.prices:  # the price is made on first use
            store.run(self.project, lambda sim: sim.session_price(session_id))
        self.show(session_id)

    async def post(self, project_id, session_id):
        action = self.get_body_argument("action", "")
        sim = store.read(self.project)
        session = sim.sessions.get(session_id)
        if session is None:
            raise tornado.web.HTTPError(404)
        if action == "cancel":
            return self.redirect(session["cancel_url"] or "/", status=303)
        card = DECLINED_CARD if action == "decline" else self.get_body_argument("card", TEST_CARDS[0][0])
        try:
            await self.act(lambda sim: lifecycle.pay_checkout(sim, session_id, card))
        except lifecycle.Declined as exc:
            return self.show(session_id, 402, str(exc))
        except StripeError as exc:
            return self.show(session_id, 400, exc.body["error"]["message"])
        target = (session["success_url"] or "/").replace("{CHECKOUT_SESSION_ID}", session_id)
        self.redirect(target, status=303)


class PortalPage(PageHandler):
    def show(self, portal_id, status=200, error="", done=""):
        sim = store.read(self.project)
        portal = sim.portal_sessions.get(portal_id)
        if portal is None:
            raise tornado.web.HTTPError(404)
        with block():
            catalog = plans.list_plans(self.project)
        slug_of = {price: plan["plan_slug"] for plan in catalog for price in plan["stripe_price_ids"]}
        subs = []
        for sub_id, sub in sim.subscriptions.items():
            if sub["customer"] != portal["customer"] or sub["status"] in ("canceled", "incomplete_expired"):
                continue
            item = sub["items"]["data"][0]
            price = item["price"]
            subs.append(
                {
                    "id": sub_id,
                    "status": sub["status"],
                    "price_id": price["id"],
                    "plan_slug": slug_of.get(price["id"], ""),
                    "amount": _money(price["unit_amount"], price["currency"]),
                    "interval": price["recurring"]["interval"],
                    "period_end": _date(item["current_period_end"]),
                    "cancel_at_period_end": sub["cancel_at_period_end"],
                    "pause_collection": sub["pause_collection"],
                }
            )
        self.render_page(
            "sandbox/portal.html",
            status=status,
            portal=objects.public(portal),
            subscriptions=subs,
            catalog=catalog,
            error=error,
            done=done,
            card=sim.card_of(portal["customer"]),
        )

    def get(self, project_id, portal_id):
        self.show(portal_id, done=self.get_query_argument("done", ""))

    async def post(self, project_id, portal_id):
        portal = store.read(self.project).portal_sessions.get(portal_id)
        if portal is None:
            raise tornado.web.HTTPError(404)
        action = self.get_body_argument("action", "")
        sub_id = self.get_body_argument("subscription", "")
        sim = store.read(self.project)
        if sim.subscriptions.get(sub_id, {}).get("customer") != portal["customer"]:
            return self.show(portal_id, 404, "No such subscription for this customer.")
        if action == "switch":
            price = self.get_body_argument("price", "")
            change = lambda sim: lifecycle.switch_price(sim, sub_id, price)  # noqa: E731
        elif action in ("cancel", "resume", "pause_collection", "unpause_collection"):
            change = lambda sim: lifecycle.PORTAL_ACTIONS[action](sim, sub_id)  # noqa: E731
        else:
            return self.show(portal_id, 400, "Unknown action.")
        try:
            await self.act(change)
        except StripeError as exc:
            return self.show(portal_id, 400, exc.body["error"]["message"])
        self.redirect(
            f"/sandbox/{self.project.public_id}/portal/{portal_id}?" + urlencode({"done": action}), status=303
        )


class InvoicePage(PageHandler):
    """The invoice's hosted page (its `hosted_invoice_url`), reached by the invoice id as Stripe's by its token."""

    def get(self, project_id, invoice_id):
        invoice = store.read(self.project).invoices.get(invoice_id)
        if invoice is None:
            raise tornado.web.HTTPError(404)
        currency = invoice["currency"]
        self.render_page(
            "sandbox/invoice.html",
            invoice=objects.public(invoice),
            created=_date(invoice["created"]),
            amount_due=_money(invoice["amount_due"], currency),
            amount_paid=_money(invoice["amount_paid"], currency),
            lines=[
                {
                    "description": line["description"],
                    "quantity": line["quantity"],
                    "amount": _money(line["amount"], currency),
                }
                for line in invoice["lines"]["data"]
            ],
        )


default_handlers = [
    (r"/sandbox/([A-Za-z0-9_-]{1,40})/checkout/([A-Za-z0-9_]{1,255})", CheckoutPage),
    (r"/sandbox/([A-Za-z0-9_-]{1,40})/portal/([A-Za-z0-9_]{1,255})", PortalPage),
    (r"/sandbox/([A-Za-z0-9_-]{1,40})/invoice/(in_[A-Za-z0-9]{1,255})", InvoicePage),
]
