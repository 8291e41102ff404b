"""The numbers admins look for: MRR per currency, subscribers, trial-to-paid conversion, churn, a 12-month MRR series.

Everything is computed from the stored subscription columns (pulse/models.py Subscription, filled from the
re-read Stripe subscription by pulse/subscriptions.py): Stripe's own status word (`stripe_status`), the plan
item's unit_amount (minor units), currency, quantity, interval and interval_count, and the dates
started_at (Stripe's `created`), trial_end and canceled_at. `load` reads them in one query; the other
functions are pure over those rows, so the rules are tested without a database.

The definitions follow Stripe's Billing analytics ("Billing metric definitions",
docs.stripe.com/billing/subscriptions/analytics/glossary, and support.stripe.com/questions/billing-analytics):
- MRR is the monthly-normalised value of the `active` and `past_due` subscriptions (one set to cancel at
  period end is still active); trials, unpaid, paused, incomplete and cancelled ones are out. Taxes and
  metered usage are out too (we store neither); forever-coupons, which Stripe subtracts, are not stored,
  so our MRR is before discounts.
- An active subscriber is a customer with a paid (non-free) `active` or `past_due` subscription: a
  customer with two counts once.
- Trial conversion and churn use Stripe's rolling 30-day window (details on each function).
Ours, where Stripe's docs give no formula: the month normalisation (a year is 12 months, 52 weeks or 365
days: yearly / 12, weekly x 52 / 12, daily x 365 / 12, then / interval_count), and that past months in the
series use today's stored price and quantity (no price history is kept).
"""

from calendar import monthrange
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from fractions import Fraction
from typing import NamedTuple

from pulse.db import utcnow
from pulse.models import Project, Subscription

PAYING = ("active", "past_due")
# Never paying: Stripe's `paused` status only comes from a trial that ended without a payment method
# (docs.stripe.com/billing/subscriptions/trials, missing_payment_method=pause).
NEVER_PAID = ("incomplete", "incomplete_expired", "paused")
PER_MONTH = {"monthly": Fraction(1), "yearly": Fraction(1, 12), "weekly": Fraction(52, 12), "daily": Fraction(365, 12)}
TRIAL_WINDOW = timedelta(days=30)
CHURN_WINDOW = timedelta(days=30)
# Stripe cancels (or pauses) a trial that ends without a payment method at trial_end itself: a
# cancellation within this long of the trial's end is a trial that did not convert.
TRIAL_END_GRACE = timedelta(days=1)
MONTHS = 12


class Row(NamedTuple):
    """The columns the metrics read from one subscription."""

    customer_id: int
    stripe_status: str
    unit_amount: int | None
    currency: str | None
    quantity: int | None
    interval: str
    interval_count: int | None
    started_at: datetime | None
    trial_end: datetime | None
    canceled_at: datetime | None


def load(project: Project) -> list[Row]:
    """[Row] of every subscription of the project. In a block."""
    s = Subscription
    query = (
        s.select(
            s.customer,
            s.stripe_status,
            s.unit_amount,
            s.currency,
            s.quantity,
            s.interval,
            s.interval_count,
            s.started_at,
            s.trial_end,
            s.canceled_at,
        )
        .where(s.project == project)
        .tuples()
    )
    return [Row(*values) for values in query]


def monthly_amount(row: Row) -> Fraction | None:
    """unit_amount x quantity normalised to one month, as a Fraction of minor units; None when not priced.

    quantity None counts as 1 (Stripe's default); interval_count None as 1. Unknown interval -> None.
    """
    per_month = PER_MONTH.get(row.interval)
    if row.unit_amount is None or not row.currency or per_month is None:
        return None
    quantity = 1 if row.quantity is None else row.quantity
    return Fraction(row.unit_amount * quantity) * per_month / max(row.interval_count or 1, 1)


def _sum_by_currency(rows: Iterable[Row]) -> dict[str, int]:
    totals: dict[str, Fraction] = {}
    for row in rows:
        amount = monthly_amount(row)
        if amount is not None and row.currency:  # a priced row always has its currency
            currency = row.currency.lower()
            totals[currency] = totals.get(currency, 0) + amount
    # Rounded once, after summing, to the nearest minor unit; largest first.
    return dict(sorted(((c, round(a)) for c, a in totals.items()), key=lambda item: (-item[1], item[0])))


def mrr(rows: Iterable[Row]) -> dict[str, int]:
    """{currency (lower case): MRR in minor units} over paying subscriptions (see the module rule), largest first."""
    return _sum_by_currency(row for row in rows if row.stripe_status in PAYING)


def unpriced(rows: Iterable[Row]) -> int:
    """How many paying subscriptions have no stored amount (not yet re-read from Stripe): left out of MRR."""
    return sum(1 for row in rows if row.stripe_status in PAYING and monthly_amount(row) is None)


def _paid(row: Row) -> bool:
    """Not on a free plan (an unknown amount counts as paid: it is not yet re-read from Stripe)."""
    return monthly_amount(row) != 0


def subscribers(rows: Sequence[Row]) -> dict[str, int]:
    """{"active": customers with a paid active or past_due subscription, "trialing": customers with a trial}."""
    return {
        "active": len({r.customer_id for r in rows if r.stripe_status in PAYING and _paid(r)}),
        "trialing": len({r.customer_id for r in rows if r.stripe_status == "trialing"}),
    }


def paying_span(row: Row) -> tuple[datetime, datetime | None] | None:
    """(since, until) the subscription was paying by its dates (until None: still is), or None if it never paid.

    Paying starts when the trial ends (or at the start without one) and stops at canceled_at once Stripe
    says canceled. Never paid: incomplete, paused, cancelled within TRIAL_END_GRACE of its trial's end,
    or cancelled at an unknown time (counted nowhere rather than everywhere). An unpaid one counts by its
    dates, as when it went unpaid is not stored.
    """
    if row.stripe_status in NEVER_PAID or row.started_at is None:
        return None
    since = max(row.started_at, row.trial_end) if row.trial_end else row.started_at
    if row.stripe_status != "canceled":
        return since, None
    if row.canceled_at is None or (row.trial_end and row.canceled_at <= row.trial_end + TRIAL_END_GRACE):
        return None
    return since, row.canceled_at


def paying_at(row: Row, at: datetime) -> bool:
    """Whether the subscription was paying at `at` (see `paying_span`)."""
    span = paying_span(row)
    return span is not None and span[0] <= at and (span[1] is None or span[1] > at)


class Conversion(NamedTuple):
    """Subscriptions whose trial ended in the window (`ended`), how many of them became paying, the share."""

    ended: int
    converted: int

    @property
    def rate(self) -> float | None:
        """converted / ended, from 0 to 1; None when no trial ended in the window."""
        return self.converted / self.ended if self.ended else None


def trial_conversion(rows: Iterable[Row], now: datetime | None = None, window: timedelta = TRIAL_WINDOW) -> Conversion:
    """Conversion of the subscriptions whose trial ended in the last `window` (Stripe's 30 days) before `now`.

    Converted: paying now (active/past_due), or paid after the trial and cancelled later. Not converted:
    cancelled or paused at the trial's end, unpaid (its first invoice never paid), incomplete.
    """
    now = now or utcnow()
    ended = [
        r
        for r in rows
        if r.trial_end is not None and now - window <= r.trial_end <= now and r.stripe_status != "trialing"
    ]
    converted = sum(
        1 for r in ended if r.stripe_status in PAYING or (r.stripe_status == "canceled" and paying_span(r) is not None)
    )
    return Conversion(len(ended), converted)


class Churn(NamedTuple):
    """Subscribers in the window (`subscribers`), how many of them churned, the share."""

    subscribers: int
    churned: int

    @property
    def rate(self) -> float | None:
        """churned / subscribers, from 0 to 1; None when the window had no subscribers."""
        return self.churned / self.subscribers if self.subscribers else None


def churn(rows: Sequence[Row], now: datetime | None = None, window: timedelta = CHURN_WINDOW) -> Churn:
    """Subscriber churn over the last `window` (Stripe's rolling 30 days), counting customers.

    Stripe's rule: churned subscribers / (active subscribers at the window's start + new ones in it). A
    customer is in the window when one of its paid subscriptions was paying at some moment of it
    (`paying_span`), and churned when none is active or past_due now (cancelled or unpaid, as Stripe counts).
    """
    now = now or utcnow()
    start = now - window
    spans = ((r.customer_id, paying_span(r)) for r in rows if _paid(r))
    seen = {who for who, span in spans if span and span[0] <= now and (span[1] is None or span[1] > start)}
    active = {r.customer_id for r in rows if r.stripe_status in PAYING and _paid(r)}
    return Churn(len(seen), len(seen - active))


def month_ends(now: datetime, months: int = MONTHS) -> list[datetime]:
    """The last instant of each of the `months` - 1 months before now's, oldest first, then `now` itself."""
    ends: list[datetime] = []
    year, month = now.year, now.month
    for _ in range(months - 1):
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        ends.append(datetime(year, month, monthrange(year, month)[1], 23, 59, 59, tzinfo=now.tzinfo))
    return ends[::-1] + [now]


def mrr_series(
    rows: Sequence[Row], now: datetime | None = None, months: int = MONTHS
) -> list[tuple[datetime, dict[str, int]]]:
    """[(month-end datetime, {currency: MRR in minor units})], oldest first, the last point being `now`.

    A past month-end counts the subscriptions paying then by their dates (`paying_at`) at today's stored
    amount; the last point is today's MRR (`mrr`), so the chart ends at the headline figure.
    """
    now = now or utcnow()
    ends = month_ends(now, months)
    series = [(end, _sum_by_currency(r for r in rows if paying_at(r, end))) for end in ends[:-1]]
    return series + [(now, mrr(rows))]
