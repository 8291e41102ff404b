"""A sandbox project's simulator page: its subscriptions, cards and clock (SPEC 8)."""

import re
from datetime import UTC, datetime

import tornado.web

from console.base import ProjectHandler
from console.dashboard import PID
from pulse.db import block
from sandbox import lifecycle, store
from sandbox.api import perform
from sandbox.core import StripeError

ADVANCE_DAYS = (1, 3, 7, 14, 31, 365)
_DAYS = re.compile(r"[0-9]{1,4}(\.[0-9]{1,6})?")


def _date(ts):
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else "—"


class SandboxPage(ProjectHandler):
    section = "sandbox"

    def prepare(self):
        super().prepare()
        if not self._finished and not self.project.sandbox:
            raise tornado.web.HTTPError(404)

    def show(self, status=200, error="", done=""):
        sim = store.read(self.project)
        rows = []
        for sub_id in sorted(sim.subscriptions, key=lambda s: sim.subscriptions[s]["_seq"], reverse=True):
            sub = sim.subscriptions[sub_id]
            item = sub["items"]["data"][0]
            rows.append(
                {
                    "id": sub_id,
                    "customer": sub["customer"],
                    "status": sub["status"],
                    "price": item["price"]["id"],
                    "period_end": _date(item["current_period_end"]),
                    "trial_end": _date(sub["trial_end"]),
                    "cancel_at_period_end": sub["cancel_at_period_end"],
                    "retry_at": _date(sub.get("_retry_at")) if sub.get("_retry_at") else "",
                    "card": sim.card_of(sub["customer"]),
                }
            )
        self.render_page(
            "sandbox_clock.html",
            status=status,
            subscriptions=rows,
            now=_date(sim.now()),
            advanced_days=round(sim.clock_offset / 86400, 2),
            after_retries=sim.after_retries,
            choices=lifecycle.AFTER_RETRIES,
            days=ADVANCE_DAYS,
            error=error,
            done=done,
            cards=lifecycle.CARD_STATES,
        )

    def get(self, project_id):
        self.show(done=self.get_query_argument("done", ""))

    async def post(self, project_id):
        action = self.get_body_argument("action", "")
        if action == "advance":
            raw = self.get_body_argument("days", "").strip()
            # float() also takes "٣", "1_0" and "inf": ASCII decimals only, as for every client number.
            days = float(raw) if _DAYS.fullmatch(raw) else 0
            if not 0 < days <= 3660:
                return self.show(400, "Advance by more than 0 and at most 3660 days.")
            change = lambda sim: lifecycle.advance(sim, int(days * 86400))  # noqa: E731
        elif action == "after_retries":
            value = self.get_body_argument("after_retries", "")
            if value not in lifecycle.AFTER_RETRIES:
                return self.show(400, "Choose what happens after the last failed retry.")
            change = lambda sim: setattr(sim, "after_retries", value)  # noqa: E731
        elif action == "card":
            customer, card = self.get_body_argument("customer", ""), self.get_body_argument("card", "")
            change = lambda sim: lifecycle.set_card(sim, customer, card)  # noqa: E731
        else:
            return self.show(400, "Unknown action.")
        try:
            await perform(self.config, self.box, self.project, change)
        except StripeError as exc:
            return self.show(400, exc.body["error"]["message"])
        with block():
            self.audit("sandbox." + action, project=self.project)
        self.redirect(self.project_url(f"sandbox?done={action}"), status=303)


default_handlers = [
    (PID + r"/sandbox", SandboxPage),
]
