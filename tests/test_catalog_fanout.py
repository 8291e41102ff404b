"""A catalog or policy change over many subscriptions: a short request, then one update per moved customer.

Issue 14: the bench's first checkout taught the catalog a price with 100k subscriptions and ran
for minutes, announcing every customer inside the request. The change is now made at once and
its announcements are queued in the same transaction (pulse.fanout), expanded in batches after.
"""

import math
import time

import pytest

from pulse import db, fanout, hotpath, outbox, plans, projects
from pulse.models import Customer, Project, Subscription
from tests.fanout_support import add_endpoint, add_old_subscription, counted_queries, expand_all, seed, updates

# A catalog change's statements whatever the number of subscriptions (20 seen on SQLite and MySQL).
REQUEST_QUERIES = 30


@pytest.fixture
def project(make_project):
    return make_project(name="Bulk").project


def test_a_catalog_change_over_5000_subscriptions_is_a_short_request_then_one_update_per_moved_customer(project):
    moving, already, other = seed(
        project,
        [
            (4000, "price_a", "starter", "active"),
            (500, "price_a", "pro", "active"),
            (500, "price_b", "basic", "active"),
        ],
    )
    add_old_subscription(project, other[0], "price_a", "starter")  # its row moves; the answer shows price_b's
    add_endpoint(project)
    assert hotpath.subscription_of(project.id, moving[0])[1]["plan_slug"] == "starter"  # now in the read model
    with db.block(), counted_queries() as sent:
        plans.set_prices(project, "pro", ["price_a"])
    assert len(sent) <= REQUEST_QUERIES, sent
    # The state moved in the request: the read model and the database answer "pro" at once.
    assert hotpath.subscription_of(project.id, moving[0])[1]["plan_slug"] == "pro"
    assert hotpath.subscription_of(project.id, other[0])[1]["plan_slug"] == "basic"
    with db.block():
        on_pro = Subscription.select().where(Subscription.project == project.id, Subscription.plan_slug == "pro")
        assert on_pro.count() == 4501
        assert fanout.queued() == 4001  # the customers of the 4001 rows that moved, not the 500 already on "pro"
    assert updates(project) == {}
    # The announcements follow, a batch per turn of the delivery loop.
    assert expand_all() == math.ceil(4001 / fanout.BATCH)
    found = updates(project)
    assert sorted(found) == sorted(moving)
    for user in moving:
        [data] = found[user]
        assert data["changed"] == ["plan_slug"], data
        assert data["previous_attributes"] == {"plan_slug": "starter"}
        assert data["object"]["plan_slug"] == "pro"
    assert expand_all() == 0 and updates(project) == found


def test_the_request_does_not_grow_with_the_subscriptions(project, make_project):
    few = make_project(name="Few").project
    seed(few, [(fanout.INLINE_MAX + 1, "price_a", "starter", "active")], prefix="f")
    seed(project, [(2000, "price_a", "starter", "active")])
    counts = []
    for tenant in (few, project):
        with db.block(), counted_queries() as sent:
            plans.learn_pair(tenant, "price_a", "pro")  # a checkout teaching the catalog its price
        counts.append(len(sent))
    assert counts[0] == counts[1]
    expand_all()
    with db.block(), counted_queries() as sent:
        plans.delete_plan(project, "pro")  # back to "starter", the fallback
    assert len(sent) <= REQUEST_QUERIES and fanout.queued() == 2000


def test_a_later_change_carries_the_queued_one_and_a_change_undone_before_the_queue_announces_nothing(project):
    (moving,) = seed(project, [(fanout.INLINE_MAX + 10, "price_a", "starter", "active")])
    add_endpoint(project)
    with db.block():
        plans.set_prices(project, "pro", ["price_a"])
        first = Customer.get(Customer.project == project.id, Customer.external_user_id == moving[0])
        with db.transaction():  # a webhook moves the first customer before the queue reaches it
            Subscription.update(status="past_due", stripe_status="past_due").where(
                Subscription.customer == first
            ).execute()
            outbox.customer_changed(project, first.id)
    expand_all()
    found = updates(project)
    assert found[moving[0]] == [
        {
            "object": found[moving[0]][0]["object"],
            "changed": ["plan_slug", "status"],
            "previous_attributes": {"plan_slug": "starter", "status": "active"},
        }
    ]
    assert all([data["changed"] for data in found[user]] == [["plan_slug"]] for user in moving[1:])
    # Out of the catalog and back before the queue ran: the answers end where the tenant last heard them.
    with db.block():
        plans.delete_plan(project, "pro")
        plans.set_prices(project, "pro", ["price_a"])
        assert fanout.queued() == 2 * len(moving)
    expand_all()
    assert updates(project) == found


def test_a_batch_that_does_not_commit_is_expanded_again_once(project):
    (moving,) = seed(project, [(fanout.BATCH + 50, "price_a", "starter", "active")])
    add_endpoint(project)
    with db.block():
        plans.set_prices(project, "pro", ["price_a"])
        with db.database.atomic() as outer:  # the process dies before the batch commits
            assert fanout.expand() == fanout.BATCH
            outer.rollback()
        assert fanout.queued() == len(moving)
    assert updates(project) == {}
    assert expand_all() == 2
    assert sorted(updates(project)) == sorted(moving)
    assert all(len(messages) == 1 for messages in updates(project).values())


def test_an_access_setting_over_many_customers_is_queued_too(project):
    past_due, active = seed(project, [(60, "price_a", "pro", "past_due"), (40, "price_a", "pro", "active")])
    add_endpoint(project)
    with db.block(), counted_queries() as sent:
        assert projects.set_past_due_policy(project, False)
    assert len(sent) <= REQUEST_QUERIES and updates(project) == {}
    assert hotpath.subscription_of(project.id, past_due[0])[1]["has_access"] is False
    expand_all()
    found = updates(project)
    assert sorted(found) == sorted(past_due)
    assert {tuple(data["changed"]) for [data] in found.values()} == {("has_access", "subscriptions_with_access")}


# ---------------------------------------------------------------- across real processes


def test_a_queue_committed_by_a_process_that_died_is_expanded_once_by_two_others(db_url):
    from tests.live_server import LiveServer
    from tests.test_outbox_processes import ENV

    starter = LiveServer(db_url, env=ENV)
    made = starter.create_project("Died")
    db.bind(db_url)
    with db.block():
        project = Project.get(Project.public_id == made["project_id"])
    (moving,) = seed(project, [(600, "price_a", "starter", "active")])
    add_endpoint(project, "http://127.0.0.1:9/unreachable")
    with db.block():  # this process commits the change and never runs a delivery loop: as if killed at once
        plans.set_prices(project, "pro", ["price_a"])
        assert fanout.queued() == 600
    db.database.close()
    first, second = LiveServer(db_url, env=ENV), LiveServer(db_url, env=ENV)
    try:
        first.start()
        second.start()
        deadline = time.monotonic() + 60
        killed = False
        while time.monotonic() < deadline:
            with db.block():
                left = fanout.queued()
            if not killed and left < 600:
                first.kill()  # mid-expansion, when the timing allows: its open batch rolls back
                killed = True
            if not left:
                break
            time.sleep(0.02)
        assert not left, "the queue was not expanded"
    finally:
        first.kill()
        second.stop()
    found = updates(project)
    assert sorted(found) == sorted(moving)
    assert all([data["changed"] for data in found[user]] == [["plan_slug"]] for user in moving)


def test_step_20_adds_the_queue_and_the_price_index_to_an_older_database(db_url, monkeypatch):
    from pulse import migrations
    from tests.migration_support import back_to_version_1

    db.bind(db_url)
    with db.block() as database:
        back_to_version_1(database)
        assert not database.table_exists("outbox_fanout")
    with monkeypatch.context() as patched:
        patched.setattr(migrations, "STEPS", [step for step in migrations.STEPS if step[0] < 20])
        migrations.migrate_database()
    assert migrations.migrate_database() == ["bulk announcements queue, subscription price index"]
    with db.block() as database:
        assert database.table_exists("outbox_fanout")
        indexes = {index.name: index.columns for index in database.get_indexes("subscription")}
        assert indexes["subscription_project_id_stripe_price_id"] == ["project_id", "stripe_price_id"]
    assert migrations.current_version() == migrations.LATEST
