"""Revenue metrics: the normalisation to a month, and each figure on seeded rows (SQLite and MySQL)."""

from datetime import datetime
from fractions import Fraction

import pytest

from pulse import db, metrics
from pulse.currency import compact, format_amount
from tests.metrics_support import MRR, seed_revenue

NOW = datetime(2026, 11, 30, 12, 0, 0)


def row(amount=1000, quantity=1, interval="monthly", count=1, currency="usd"):
    return metrics.Row(1, "active", amount, currency, quantity, interval, count, None, None, None)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"quantity": 3}, 3000),
        ({"interval": "yearly", "amount": 12000}, 1000),
        ({"interval": "weekly", "amount": 1200}, 5200),  # x 52 / 12
        ({"interval": "daily", "amount": 100}, Fraction(36500, 12)),  # x 365 / 12
        ({"interval": "monthly", "count": 3, "amount": 3000}, 1000),  # quarterly
        ({"interval": "yearly", "count": 2, "amount": 24000, "quantity": 5}, 5000),
        ({"quantity": None}, 1000),  # Stripe's default quantity
        ({"count": None}, 1000),
        ({"quantity": 0}, 0),
        ({"amount": None}, None),  # not priced yet
        ({"currency": None}, None),
        ({"interval": ""}, None),  # unknown interval
    ],
)
def test_monthly_amount_normalises_to_a_month(kwargs, expected):
    assert metrics.monthly_amount(row(**kwargs)) == expected


def test_month_ends_are_the_last_instants_of_the_eleven_months_before_then_now():
    ends = metrics.month_ends(datetime(2024, 3, 15, 9, 30))
    assert len(ends) == 12 and ends[-1] == datetime(2024, 3, 15, 9, 30)
    assert ends[0] == datetime(2023, 4, 30, 23, 59, 59)
    assert datetime(2024, 2, 29, 23, 59, 59) in ends and datetime(2023, 12, 31, 23, 59, 59) in ends


def test_amounts_use_the_currencys_minor_units():
    assert format_amount(343433, "usd") == "3,434.33 USD"
    assert format_amount(1999, "jpy") == "1,999 JPY" and format_amount(1500, "KWD") == "1.500 KWD"
    assert [compact(v) for v in (0, 500, 1000, 2500, 1200000)] == ["0", "500", "1k", "2.5k", "1.2M"]


def test_each_metric_on_seeded_rows(app, project):
    seed_revenue(project.project, NOW)
    with db.block():
        rows = metrics.load(project.project)
    assert len(rows) == 11
    assert metrics.mrr(rows) == MRR and list(metrics.mrr(rows)) == ["usd", "jpy"]
    assert metrics.unpriced(rows) == 1
    # Customers a, b (two subscriptions), e, i pay; j is on a free plan; c is in trial.
    assert metrics.subscribers(rows) == {"active": 4, "trialing": 1}
    # Trials ended in 30 days: e (paying), h (paid, cancelled later) converted; f (cancelled), g (paused) not.
    conversion = metrics.trial_conversion(rows, NOW)
    assert conversion == (4, 2) and conversion.rate == 0.5
    # Subscribers in the last 30 days: a, b, d, e, h, i; d and h have no paying subscription left.
    churn = metrics.churn(rows, NOW)
    assert churn == (6, 2) and churn.rate == 1 / 3


def test_never_paid_subscriptions_have_no_paying_span():
    at = NOW
    base = metrics.Row(1, "canceled", 1000, "usd", 1, "monthly", 1, at, at, at)
    assert metrics.paying_span(base) is None  # cancelled at its trial's end
    assert metrics.paying_span(base._replace(canceled_at=None)) is None  # cancelled at an unknown time
    assert metrics.paying_span(base._replace(stripe_status="incomplete", canceled_at=None)) is None
    later = base._replace(canceled_at=datetime(2026, 12, 9))
    assert metrics.paying_span(later) == (at, datetime(2026, 12, 9))
    assert metrics.paying_at(later, datetime(2026, 12, 1)) and not metrics.paying_at(later, datetime(2026, 12, 9))


def test_the_twelve_month_series_counts_who_paid_at_each_month_end(app, project):
    seed_revenue(project.project, NOW)
    with db.block():
        rows = metrics.load(project.project)
    series = metrics.mrr_series(rows, NOW)
    assert [end for end, _ in series] == metrics.month_ends(NOW)
    usd = [totals.get("usd", 0) for _, totals in series]
    # Dec..Apr: b only; from May d too; from Aug a; today: d gone, e paying (h paid only within November).
    assert usd == [1000] * 5 + [2000] * 3 + [4000] * 3 + [MRR["usd"]]
    assert series[-1][1] == MRR and all("jpy" not in totals for _, totals in series[:-1])


def test_no_subscriptions_gives_zeros_not_errors(app, project):
    with db.block():
        rows = metrics.load(project.project)
    assert metrics.mrr(rows) == {} and metrics.subscribers(rows) == {"active": 0, "trialing": 0}
    assert metrics.trial_conversion(rows, NOW).rate is None and metrics.churn(rows, NOW).rate is None
    assert all(totals == {} for _, totals in metrics.mrr_series(rows, NOW))
