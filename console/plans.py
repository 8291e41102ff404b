"""The plan catalog page: each plan_slug with its Stripe price ids, editable (SPEC 5)."""

import re

from console.base import ProjectHandler
from console.dashboard import PID
from pulse import plans
from pulse.db import block

_SEPARATORS = re.compile(r"[\s,]+")
DONE = {"saved": "Plan saved.", "deleted": "Plan deleted."}


def price_ids_of(text):
    """Price ids typed one per line (commas and spaces separate too), duplicates dropped."""
    return list(dict.fromkeys(p for p in _SEPARATORS.split(text or "") if p))


class PlansPage(ProjectHandler):
    section = "plans"

    def show(self, status=200, error="", confirm=None, form=None):
        with block():
            catalog = plans.list_plans(self.project)
        self.render_page(
            "plans.html",
            status=status,
            plans=catalog,
            error=error,
            confirm=confirm,
            form=form or {"plan_slug": "", "stripe_price_ids": ""},
            done=DONE.get(self.get_query_argument("done", ""), ""),
        )


class PlansHandler(PlansPage):
    def get(self, project_id):
        self.show()

    def post(self, project_id):
        slug = self.get_body_argument("plan_slug", "").strip()
        text = self.get_body_argument("stripe_price_ids", "")
        form = {"plan_slug": slug, "stripe_price_ids": text}
        wanted = price_ids_of(text)
        if not plans.valid_slug(slug):
            return self.show(400, "The plan slug must be 1-100 characters without control characters.", form=form)
        if not 1 <= len(wanted) <= plans.MAX_PRICES or not all(plans.valid_price_id(p) for p in wanted):
            return self.show(400, f"Enter 1 to {plans.MAX_PRICES} Stripe price ids (price_…), one per line.", form=form)
        try:
            with block():
                saved, _ = plans.set_prices(self.project, slug, wanted)
                self.audit(
                    "plan.saved", project=self.project, plan_slug=slug, stripe_price_ids=saved["stripe_price_ids"]
                )
        except plans.PlanConflict as exc:
            return self.show(400, exc.message, form=form)
        self.redirect(self.project_url("plans?done=saved"), status=303)


class PlanDeleteHandler(PlansPage):
    def post(self, project_id):
        slug = self.get_body_argument("plan_slug", "")
        if self.get_body_argument("confirm", "") != "yes":
            return self.show(confirm=slug)  # asks again, without JavaScript
        try:
            with block():
                plans.delete_plan(self.project, slug)
                self.audit("plan.deleted", project=self.project, plan_slug=slug)
        except plans.PlanNotFound:
            return self.show(404, "No such plan in this project's catalog.")
        self.redirect(self.project_url("plans?done=deleted"), status=303)


default_handlers = [
    (PID + r"/plans", PlansHandler),
    (PID + r"/plans/delete", PlanDeleteHandler),
]
