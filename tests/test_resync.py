"""sync-stripe: repairing local state whose webhooks were lost, in-process and as the real CLI."""

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from pulse import billing, db, resync
from pulse import subscriptions as subs
from pulse.models import Customer, Subscription
from tests.fake_stripe import FAKE_SECRET_KEY
from tests.stripe_events import NEW_API, OLD_API, event, new_subscription
from tests.support import TEST_SECRET
from tests.webhook_support import assert_matches_stripe

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides(stripe_max_retries=0)


def lost_webhooks(fake, project, other_project):
    """Stripe state PaymentPulse partly missed: returns {user: subscription id}."""
    subs_by_user = {}
    for user in ("kept", "changed", "missed-1", "missed-2"):
        _, sub = new_subscription(fake, user, project_id=project.public_id)
        subs_by_user[user] = sub["id"]
    new_subscription(fake, "elsewhere", project_id=other_project.public_id)
    return subs_by_user


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("api_version", [OLD_API, NEW_API])
async def test_sync_repairs_state_whose_webhooks_were_lost(
    read, fake_stripe, hooked, make_project, deliver, app, api_version
):
    fake_stripe.api_version = api_version
    other = make_project(name="Other")
    ids = lost_webhooks(fake_stripe, hooked.project, other.project)
    for user in ("kept", "changed"):
        assert (await deliver(event("customer.subscription.created", fake_stripe.subscription(ids[user])))).code == 200
    # Then the portal cancels one (cancel_at only) and its webhook never arrives.
    period_end = fake_stripe.subscription(ids["changed"], NEW_API)["items"]["data"][0]["current_period_end"]
    fake_stripe.set_subscription(ids["changed"], cancel_at=period_end)
    assert (await read(hooked, "changed"))["status"] == "active"
    assert await read(hooked, "missed-1") is None

    lines = []
    counts = await resync.sync_project(
        hooked.project, config=app.settings["config"], box=app.settings["secret_box"], progress=lines.append
    )
    assert {k: counts[k] for k in ("created", "updated", "unchanged", "skipped", "customers")} == {
        "created": 2,
        "updated": 1,
        "unchanged": 1,
        "skipped": 1,
        "customers": 4,
    }
    assert len(lines) == 4
    for user, sub_id in ids.items():
        assert_matches_stripe(await read(hooked, user), fake_stripe, sub_id)
    assert (await read(hooked, "changed"))["status"] == "cancelling"
    assert (await read(hooked, "missed-2"))["email"] == "missed-2@example.test"
    assert await read(other, "elsewhere") is None
    with db.block():
        assert Customer.select().where(Customer.project == other.project).count() == 0

    again = await resync.sync_project(hooked.project, config=app.settings["config"], box=app.settings["secret_box"])
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 4)


@pytest.mark.gen_test(timeout=30)
async def test_an_older_listing_never_overwrites_a_newer_webhook(read, fake_stripe, hooked, deliver):
    """The rule that makes sync safe while webhooks arrive: a snapshot older than the stored one loses."""
    _, sub = new_subscription(fake_stripe, "racer", project_id=hooked.project.public_id)
    listing_at = subs.clock_ms()
    listed = fake_stripe.subscription(sub["id"])  # what a sync started now would have read
    await asyncio.sleep(0.01)
    fake_stripe.set_subscription(sub["id"], status="past_due")
    assert (
        await deliver(
            event(
                "invoice.payment_failed",
                {"id": "in_1", "object": "invoice", "customer": sub["customer"], "subscription": sub["id"]},
            )
        )
    ).code == 200
    assert (await read(hooked, "racer"))["status"] == "past_due"
    with db.block():
        with db.transaction():
            assert subs.upsert_subscription(hooked.project, listed, listing_at) == subs.STALE
        assert Subscription.get(Subscription.stripe_subscription_id == sub["id"]).status == "past_due"


async def run_cli(*args, env):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "run.py"),
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.gen_test(timeout=60)
async def test_sync_stripe_command(read, fake_stripe, hooked, make_project, db_url):
    other = make_project(name="Other")
    ids = lost_webhooks(fake_stripe, hooked.project, other.project)
    env = dict(
        os.environ,
        PULSE_DATABASE_URL=db_url,
        PULSE_SECRET_KEY=TEST_SECRET,
        PULSE_STRIPE_API_BASE=fake_stripe.url,
        PULSE_STRIPE_SECRET_KEY=FAKE_SECRET_KEY,
        PULSE_STRIPE_MAX_RETRIES="0",
        PULSE_LOG_LEVEL="warning",
    )
    db.database.close()  # the child opens its own connection (SQLite: the same file)
    code, out, err = await run_cli("sync-stripe", hooked.project.public_id, env=env)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("synced 4 subscription(s) of 4 customer(s): 4 created, 0 updated")
    for user, sub_id in ids.items():
        assert_matches_stripe(await read(hooked, user), fake_stripe, sub_id)

    code, out, _ = await run_cli("sync-stripe", hooked.project.public_id, "--json", env=env)
    summary = json.loads(out)
    assert code == 0 and (summary["created"], summary["unchanged"]) == (0, 4)
    assert summary["project_id"] == hooked.project.public_id

    code, out, err = await run_cli("sync-stripe", "proj_nope", env=env)
    assert code == 1 and "no project" in err and out == ""
    fake_stripe.fail_next(5, status=500)
    code, out, err = await run_cli("sync-stripe", hooked.project.public_id, env=env)
    assert code == 1 and "Stripe" in err and FAKE_SECRET_KEY not in err


@pytest.mark.gen_test(timeout=60)
async def test_sync_applies_a_missed_customer_deletion_and_leaves_a_404_alone(read, fake_stripe, hooked, deliver, app):
    _, sub = new_subscription(fake_stripe, "deleted-later", project_id=hooked.project.public_id)
    assert (await deliver(event("customer.subscription.created", sub))).code == 200
    fake_stripe.delete_customer(sub["customer"])  # and both webhooks are lost
    with db.block():
        other = Customer.create(
            project=hooked.project, external_user_id="other-account", stripe_customer_id="cus_in_another_account"
        )
    lines = []
    counts = await resync.sync_project(
        hooked.project, config=app.settings["config"], box=app.settings["secret_box"], progress=lines.append
    )
    assert counts["deleted_customers"] == 1
    assert lines == [f"{sub['customer']}: deleted in Stripe, unlinked"]
    found = await read(hooked, "deleted-later")
    assert (found["status"], found["has_access"], found["stripe_customer_id"]) == ("cancelled", False, None)
    with db.block():
        customer = Customer.get(Customer.external_user_id == "deleted-later")
        assert [cid for cid, _, _ in subs.previous_stripe_customers(customer)] == [sub["customer"]]
        assert Customer.get_by_id(other.id).stripe_customer_id == "cus_in_another_account"
    again = await resync.sync_project(hooked.project, config=app.settings["config"], box=app.settings["secret_box"])
    assert again["deleted_customers"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_sync_reads_every_page_of_a_long_customer_list(read, fake_stripe, hooked, app):
    """Stripe lists 100 objects a page: the subscription of the oldest customer is on the third page."""
    _, sub = new_subscription(fake_stripe, "oldest", project_id=hooked.project.public_id)
    for n in range(205):
        fake_stripe.dispatch("POST", "customers", {"email": f"walk-in-{n}@example.test"})
    fake_stripe.requests.clear()

    counts = await resync.sync_project(hooked.project, config=app.settings["config"], box=app.settings["secret_box"])
    assert (counts["created"], counts["customers"]) == (1, 1)
    assert_matches_stripe(await read(hooked, "oldest"), fake_stripe, sub["id"])
    pages = [params for method, path, params, _ in fake_stripe.requests if (method, path) == ("GET", "/v1/customers")]
    assert [(p.get("limit"), "starting_after" in p) for p in pages] == [("100", False), ("100", True), ("100", True)]

    # A failure on a later page is a StripeFailure too (sync-stripe reports it), not a raw StripeError.
    listing = resync._each(billing.client_for(app.settings["config"], FAKE_SECRET_KEY).v1.customers.list_async, {})
    assert len([await anext(listing) for _ in range(100)]) == 100
    fake_stripe.fail_next(1, status=500, path="/v1/customers")
    with pytest.raises(billing.StripeFailure) as failure:
        await anext(listing)
    assert failure.value.http_status == 500
