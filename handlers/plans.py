"""GET /api/plans, PUT /api/plans/{plan_slug}, DELETE /api/plans/{plan_slug}: the plan catalog (SPEC 3.2)."""

from handlers.base import ApiError, ApiHandler, invalid, missing
from pulse import plans, projects
from pulse.db import block

FIELDS = ("stripe_price_ids",)


def _slug(raw):
    if not plans.valid_slug(raw):
        raise invalid("plan_slug", "plan_slug must be 1-100 characters without control characters")
    return raw


def price_ids(data):
    """The validated `stripe_price_ids` of a PUT body: a list of up to 100 Stripe price ids."""
    for name in data:
        if name not in FIELDS:
            raise invalid(name, f"{name}: unknown parameter")
    if "stripe_price_ids" not in data or data["stripe_price_ids"] is None:
        raise missing("stripe_price_ids")
    value = data["stripe_price_ids"]
    if not isinstance(value, list) or not 1 <= len(value) <= plans.MAX_PRICES:
        # A plan with no price could never match a subscription: delete the plan instead.
        raise invalid("stripe_price_ids", f"stripe_price_ids must be a list of 1 to {plans.MAX_PRICES} price ids")
    if not all(plans.valid_price_id(p) for p in value):
        raise invalid(
            "stripe_price_ids",
            "each stripe_price_id must be a Stripe price id (1-255 characters, no spaces or control characters)",
        )
    return value


class PlansHandler(ApiHandler):
    def get(self):
        with block():
            found = plans.list_plans(self.project)
        self.write_json({"plans": found})


class PlanHandler(ApiHandler):
    def _actor(self):
        return f"api-key:{self.api_key.prefix}"

    def put(self, plan_slug):
        slug = _slug(plan_slug)
        wanted = price_ids(self.json_body())
        try:
            with block():
                plan, created = plans.set_prices(self.project, slug, wanted)
                projects.audit(
                    "plan.saved",
                    project=self.project,
                    actor=self._actor(),
                    ip=self.request.remote_ip,
                    plan_slug=slug,
                    stripe_price_ids=plan["stripe_price_ids"],
                )
        except plans.PlanConflict as exc:
            # The body is well formed but clashes with the stored catalog: a state conflict, as 409 means.
            raise ApiError(409, "plan_conflict", exc.message, field=exc.field) from None
        self.write_json(plan, status=201 if created else 200)

    def delete(self, plan_slug):
        slug = _slug(plan_slug)
        try:
            with block():
                plans.delete_plan(self.project, slug)
                projects.audit(
                    "plan.deleted", project=self.project, actor=self._actor(), ip=self.request.remote_ip, plan_slug=slug
                )
        except plans.PlanNotFound:
            raise ApiError(404, "not_found", "No plan with this plan_slug in this project's catalog.") from None
        self.write_json({"plan_slug": slug, "deleted": True})


default_handlers = [
    (r"/api/plans", PlansHandler),
    (r"/api/plans/(?P<plan_slug>[^/]+)", PlanHandler),
]
