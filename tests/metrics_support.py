"""Seeded subscriptions for the revenue metrics: one of each case, with the figures they must give."""

from datetime import timedelta

from pulse import db
from pulse.models import Customer, Subscription
from pulse.status import map_status

# (customer, stripe_status, unit_amount, currency, quantity, interval, interval_count,
#  started days ago, trial_end days ago (negative: still to come), canceled days ago)
CASES = [
    ("a", "active", 1000, "usd", 2, "monthly", 1, 100, None, None),  # 2000/month
    ("b", "past_due", 12000, "usd", 1, "yearly", 1, 400, None, None),  # 1000/month, past_due counts
    ("b", "active", 500, "jpy", 1, "monthly", 1, 20, None, None),  # 500 JPY, zero-decimal
    ("c", "trialing", 1000, "usd", 1, "monthly", 1, 5, -9, None),  # a trial: no MRR yet
    ("d", "canceled", 1000, "usd", 1, "monthly", 1, 200, None, 10),  # churned in the last 30 days
    ("e", "active", 100, "usd", 1, "weekly", 1, 40, 26, None),  # converted; 100 x 52 / 12
    ("f", "canceled", 1000, "usd", 1, "monthly", 1, 30, 16, 16),  # cancelled at its trial's end
    ("g", "paused", 1000, "usd", 1, "monthly", 1, 26, 12, None),  # paused at its trial's end
    ("h", "canceled", 3000, "usd", 1, "monthly", 3, 42, 28, 20),  # paid after its trial, then churned
    ("i", "active", None, None, None, "monthly", None, 3, None, None),  # not re-read yet: no price
    ("j", "active", 0, "usd", 1, "monthly", 1, 50, None, None),  # a free plan: not a subscriber
]
MRR = {"usd": 3433, "jpy": 500}  # 2000 + 1000 + 433.33 (rounded once, after summing)


def seed_revenue(project, now):
    """Create CASES for `project`, dates counted back from `now` (naive UTC)."""
    ago = lambda days: None if days is None else now - timedelta(days=days)  # noqa: E731
    with db.block():
        customers = {}
        for i, (who, stripe_status, amount, currency, quantity, interval, count, started, trial, canceled) in enumerate(
            CASES
        ):
            if who not in customers:
                customers[who] = Customer.create(
                    project=project, external_user_id=f"rev-{who}", stripe_customer_id=f"cus_rev_{who}"
                )
            Subscription.create(
                project=project,
                customer=customers[who],
                stripe_subscription_id=f"sub_rev{i}",
                stripe_status=stripe_status,
                status=map_status(stripe_status),
                unit_amount=amount,
                currency=currency,
                quantity=quantity,
                interval=interval,
                interval_count=count,
                started_at=ago(started),
                trial_end=ago(trial),
                canceled_at=ago(canceled),
            )
