"""The hot path, GET /api/subscription: one lean SQL query straight to the public JSON shape."""

import peewee as pw

from pulse.db import isoformat
from pulse.models import Customer, Project, Subscription
from pulse.status import ACCESS_STATUSES, has_access

_ACCESS = ACCESS_STATUSES + ("past_due",)


def _query(project_id, external_user_id):
    # One round trip: the customer, the project's past-due policy (fresh, never cached) and the
    # subscription that wins (access first, then most recent), as plain tuples (no model objects).
    access_first = pw.Case(None, [(
        Subscription.status.in_(ACCESS_STATUSES)
        | ((Subscription.status == "past_due") & (Project.past_due_has_access == True)), 0)], 1)  # noqa: E712
    return (Customer
            .select(Customer.external_user_id, Customer.email, Customer.stripe_customer_id,
                    Project.past_due_has_access, Subscription.status, Subscription.plan_slug,
                    Subscription.interval, Subscription.stripe_price_id, Subscription.current_period_end,
                    Subscription.cancel_at, Subscription.trial_end, Subscription.stripe_subscription_id)
            .join(Project, on=(Project.id == Customer.project))
            .switch(Customer)
            .join(Subscription, pw.JOIN.LEFT_OUTER, on=(Subscription.customer == Customer.id))
            .where((Customer.project == project_id) & (Customer.external_user_id == external_user_id))
            .order_by(access_first, Subscription.started_at.desc(nulls="LAST"), Subscription.id.desc())
            .limit(1)
            .tuples())


def subscription_of(project_id, external_user_id):
    """`(customer_found, body)` for GET /api/subscription; body is None without a subscription.

    Call inside a db block. `customer_found` lets the handler word its 404.
    """
    rows = list(_query(project_id, external_user_id))
    if not rows:
        return False, None
    (ext_id, email, stripe_customer_id, past_due_access, status, plan_slug, interval, price_id,
     period_end, cancel_at, trial_end, subscription_id) = rows[0]
    if subscription_id is None:
        return True, None
    return True, {
        "external_user_id": ext_id,
        "email": email,
        "status": status,
        "has_access": has_access(status, past_due_access),
        "plan_slug": plan_slug or None,
        "interval": interval or None,
        "stripe_price_id": price_id or None,
        "current_period_end": isoformat(period_end),
        "cancel_at": isoformat(cancel_at),
        "trial_end": isoformat(trial_end),
        "stripe_customer_id": stripe_customer_id,
        "stripe_subscription_id": subscription_id,
    }
