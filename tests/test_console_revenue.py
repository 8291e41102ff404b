"""The dashboard's revenue figures: MRR per currency in its minor units, subscribers, conversion, churn, MRR chart."""

import re

import pytest

from pulse.db import utcnow
from tests.console_support import Console, text
from tests.metrics_support import seed_revenue


@pytest.fixture
def console(http_client, base_url):
    return Console(http_client, base_url)


def revenue_of(page):
    return page[page.index('id="revenue"') : page.index("Subscriptions started")]


def stat(section, label):
    found = re.search(rf'stat-label">{re.escape(label)}</span><span class="stat-value[^"]*">(.*?)</span>', section)
    return found.group(1) if found else None


@pytest.mark.gen_test(timeout=60)
async def test_dashboard_shows_revenue_numbers_and_a_labelled_mrr_chart(console, project):
    seed_revenue(project.project, utcnow())
    await console.login(project.admin.email)
    page = text(await console.get(f"/console/p/{project.project.public_id}/"))
    revenue = revenue_of(page)
    assert "<span>34.33 USD</span><br><span>500 JPY</span>" in revenue  # JPY has no minor unit
    assert stat(revenue, "Paying subscribers") == "4" and stat(revenue, "In trial") == "1"
    assert stat(revenue, "Trial to paid, 30 days") == "50%" and "2 of 4 ended trials" in revenue
    assert stat(revenue, "Subscriber churn, 30 days") == "33.3%" and "2 of 6 subscribers left" in revenue
    assert "1 paying subscription without a stored price" in revenue
    # The chart of the leading currency, wide and narrow, each with 12 monthly bars and both axes labelled.
    assert "MRR in USD, last 12 months" in revenue and revenue.count("<svg") == 2
    assert revenue.count("<rect ") == 24 and revenue.count(">MRR (USD)</text>") == 2
    assert revenue.count("Month end (this month: today)") == 2
    assert ">50</text>" in revenue and ">25</text>" in revenue  # y ticks in dollars: 0, 25, 50 (the top month is 40.00)
    assert "34.33 USD</title>" in revenue and "Also billed in JPY" in revenue


@pytest.mark.gen_test(timeout=60)
async def test_dashboard_without_prices_shows_zero_mrr_and_no_chart(console, project):
    await console.login(project.admin.email)
    revenue = revenue_of(text(await console.get(f"/console/p/{project.project.public_id}/")))
    assert stat(revenue, "MRR") == "0" and "<svg" not in revenue
    assert stat(revenue, "Trial to paid, 30 days") == "—" and stat(revenue, "Subscriber churn, 30 days") == "—"


@pytest.mark.gen_test(timeout=60)
async def test_customer_page_shows_seat_prices_in_the_currencys_minor_units(console, project):
    seed_revenue(project.project, utcnow())
    await console.login(project.admin.email)
    page = text(await console.get(f"/console/p/{project.project.public_id}/customers/rev-b"))
    assert "at 500 JPY each" in page and "at 120.00 USD each" in page  # not 5.00 JPY
