"""Console: the Plans page, the paused-collection setting, and the flags for paused and doubled subscriptions."""

from datetime import datetime

import pytest

from pulse import db, plans
from pulse.models import AuditLog, Project, Subscription
from tests.console_support import Console, seed, text


@pytest.fixture
def console(http_client, base_url):
    return Console(http_client, base_url)


def url(project, suffix=""):
    return f"/console/p/{project.project.public_id}/{suffix}"


@pytest.mark.gen_test(timeout=60)
async def test_plans_page_lists_adds_refuses_conflicts_and_deletes_after_confirmation(console, project):
    await console.login(project.admin.email)
    with db.block():
        plans.learn_pair(project.project, "price_pro_monthly", "pro")
    page = await console.get(url(project, "plans"))
    assert page.code == 200 and "price_pro_monthly" in text(page) and 'aria-current="page">Plans' in text(page)
    saved = await console.post(
        url(project, "plans"),
        {"plan_slug": "team <b>", "stripe_price_ids": "price_team_m,\nprice_team_y  price_team_m"},
    )
    assert saved.code == 303 and saved.headers["Location"].endswith("plans?done=saved")
    page = text(await console.get(url(project, "plans?done=saved")))
    assert "Plan saved." in page and "team &lt;b&gt;" in page and "price_team_y" in page
    with db.block():
        assert plans.catalog_of(project.project)["price_team_m"] == "team <b>"
    conflict = await console.post(url(project, "plans"), {"plan_slug": "other", "stripe_price_ids": "price_team_y"})
    assert conflict.code == 400 and "already belongs to plan" in text(conflict)
    assert (await console.post(url(project, "plans"), {"plan_slug": "", "stripe_price_ids": "x"})).code == 400
    empty = await console.post(url(project, "plans"), {"plan_slug": "bare", "stripe_price_ids": " \n"})
    assert empty.code == 400 and "Enter 1 to" in text(empty)  # a plan with no price could match nothing
    asked = await console.post(url(project, "plans/delete"), {"plan_slug": "pro"})
    assert asked.code == 200 and "Delete plan “pro”?" in text(asked)
    with db.block():
        assert "price_pro_monthly" in plans.catalog_of(project.project)  # nothing deleted yet
    done = await console.post(url(project, "plans/delete"), {"plan_slug": "pro", "confirm": "yes"})
    assert done.code == 303
    with db.block():
        assert "price_pro_monthly" not in plans.catalog_of(project.project)
        actions = [a.action for a in AuditLog.select().where(AuditLog.action.startswith("plan."))]
    assert actions == ["plan.saved", "plan.deleted"]
    assert (await console.post(url(project, "plans/delete"), {"plan_slug": "pro", "confirm": "yes"})).code == 404
    assert (await console.post(url(project, "plans"), {"plan_slug": "x"}, xsrf=False)).code == 403


@pytest.mark.gen_test(timeout=60)
async def test_paused_collection_setting_and_customer_page(console, project):
    customers, _ = seed(project.project, count=2)
    with db.block():
        Subscription.update(
            pause_behavior="mark_uncollectible",
            pause_resumes_at=datetime(2027, 3, 1),
            quantity=5,
            interval_count=3,
            unit_amount=1999,
            currency="eur",
        ).where(Subscription.customer == customers[0].id).execute()
    await console.login(project.admin.email)
    page = text(await console.get(url(project, "customers/user-000")))
    assert "paused (mark uncollectible)" in page and "2027-03-01" in page and "every 3 ×" in page
    assert "19.99 EUR" in page and "has access" in page
    saved = await console.post(url(project, "settings/paused-collection"), {"paused_collection_has_access": "no"})
    assert saved.code == 303
    with db.block():
        assert Project.get_by_id(project.project.id).paused_collection_has_access is False
        assert AuditLog.select().where(AuditLog.action == "settings.paused_collection_policy").count() == 1
    assert "no access" in text(await console.get(url(project, "customers/user-000")))
    assert (
        await console.post(url(project, "settings/paused-collection"), {"paused_collection_has_access": "x"})
    ).code == 400


@pytest.mark.gen_test(timeout=60)
async def test_customers_with_two_subscriptions_with_access_are_flagged(console, project):
    customers, _ = seed(project.project, count=2)
    await console.login(project.admin.email)
    assert "more than one subscription with access" not in text(await console.get(url(project)))
    with db.block():
        Subscription.create(
            project=project.project,
            customer=customers[1],
            stripe_subscription_id="sub_dup",
            stripe_status="active",
            status="active",
            plan_slug="pro",
        )
    dashboard = text(await console.get(url(project)))
    assert "more than one subscription with access" in dashboard and "customers/user-001" in dashboard
    assert "2 subscriptions grant access" in text(await console.get(url(project, "customers/user-001")))
    assert "subscriptions grant access" not in text(await console.get(url(project, "customers/user-000")))
