"""The hot path's read model (pulse.hotpath) and the change feed that keeps it coherent (pulse.changefeed)."""

import json
import time

import pytest
from playhouse.migrate import migrate as run_operations

from pulse import changefeed, db, hotpath, migrations
from pulse.models import Customer, Project, ReadModelChange, Subscription
from pulse.status import map_status
from tests.billing_support import add_customer, add_subscription
from tests.support import MYSQL_URL


def answer(project_id, user):
    with db.block():
        return hotpath.subscription_of(project_id, user)


def elsewhere(db_url, models, action):
    """Run `action` through a second database handle, as another process would (this handle sees no write)."""
    other = db.open_database(db_url)
    try:
        with other.bind_ctx(models):
            other.connect()
            return action()
    finally:
        other.close()


def wait_for(check, seconds=2.0):
    """True once `check()` holds, polling until `seconds` (the SPEC's bound for other processes)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_answers_stay_in_memory_until_the_feed_names_them(app, project, db_url):
    shop = project.project
    subscription = add_subscription(add_customer(shop, "user-1"), "active")
    add_subscription(add_customer(shop, "user-2"), "active")
    assert answer(shop.id, "user-1")[1]["has_access"] is True
    assert answer(shop.id, "user-2")[1]["has_access"] is True
    time.sleep(hotpath.POLL + 0.1)  # past one poll: with no change, both stay in memory
    hits = hotpath.STATS["hits"]
    answer(shop.id, "user-1"), answer(shop.id, "user-2")
    assert hotpath.STATS["hits"] == hits + 2

    elsewhere(
        db_url,
        [Subscription],
        lambda: (
            Subscription.update(status=map_status("canceled"), stripe_status="canceled")
            .where(Subscription.id == subscription.id)
            .execute()
        ),
    )
    assert wait_for(lambda: answer(shop.id, "user-1")[1]["has_access"] is False)
    misses = hotpath.STATS["misses"]
    assert answer(shop.id, "user-2")[1]["has_access"] is True  # the change named user-1 only
    assert hotpath.STATS["misses"] == misses


def test_a_user_created_elsewhere_replaces_a_remembered_404(app, project, db_url):
    shop = project.project
    assert answer(shop.id, "late-user") == (False, None)

    def create():
        customer = Customer.create(project=shop.id, external_user_id="late-user", email="late@example.test")
        return Subscription.create(
            project=shop.id,
            customer=customer,
            stripe_subscription_id="sub_late",
            stripe_status="active",
            status="active",
        )

    elsewhere(db_url, [Customer, Subscription], create)
    assert wait_for(lambda: (answer(shop.id, "late-user")[1] or {}).get("stripe_subscription_id") == "sub_late")


def test_a_policy_change_elsewhere_reaches_every_answer_of_the_project(app, project, db_url):
    shop = project.project
    for user in ("due-1", "due-2"):
        add_subscription(add_customer(shop, user), "past_due")
        assert answer(shop.id, user)[1]["has_access"] is True
    elsewhere(
        db_url, [Project], lambda: Project.update(past_due_has_access=False).where(Project.id == shop.id).execute()
    )
    assert wait_for(lambda: [answer(shop.id, u)[1]["has_access"] for u in ("due-1", "due-2")] == [False, False])


def test_a_customer_deleted_elsewhere_is_forgotten(app, project, db_url):
    shop = project.project
    customer = add_customer(shop, "gone")
    add_subscription(customer, "active")
    assert answer(shop.id, "gone")[0] is True
    elsewhere(db_url, [Customer], lambda: Customer.delete().where(Customer.id == customer.id).execute())
    assert wait_for(lambda: answer(shop.id, "gone") == (False, None))


def test_the_http_answer_is_the_public_json(app, project):
    """The read model keeps the encoded body; GET /api/subscription serves it as JSON."""
    shop = project.project
    add_subscription(add_customer(shop, "user-json", email="j@example.test"), "trialing")
    with db.block():
        found, body = hotpath.answer(shop.id, "user-json")
    decoded = json.loads(body)
    assert found is True and decoded["status"] == "trialing" and decoded["email"] == "j@example.test"


# MySQL only (SQLite has one writer at a time, so its ids commit in order); without MySQL the empty
# parameter set is reported as a skip, as the other MySQL tests are.
@pytest.mark.parametrize("db_url", ["mysql"] if MYSQL_URL else [], indirect=True)
def test_the_feed_rereads_an_id_committed_after_a_higher_one(db_url):
    """MySQL hands out auto-increment ids at insert: a transaction may commit after a later one was read."""
    db.bind(db_url)
    with db.block() as handle:
        shop = Project.create(public_id="proj_gap", name="Gap")
        feed = changefeed.Feed()
        assert feed.changes(handle) is None  # the first look only finds its position
        slow = db.open_database(db_url)
        slow.connect()
        try:
            with slow.bind_ctx([Customer]):
                slow.execute_sql("BEGIN")
                Customer.create(project=shop.id, external_user_id="slow")  # takes an id, not yet committed
            Customer.create(project=shop.id, external_user_id="fast")  # the next id, committed
            assert [c[2] for c in feed.changes(handle)] == ["fast"]
            assert feed.gaps, "the uncommitted id is remembered as a gap"
            slow.execute_sql("COMMIT")
        finally:
            slow.close()
        assert [c[2] for c in feed.changes(handle)] == ["slow"]
        assert not feed.gaps


def test_step_11_adds_the_feed_and_its_triggers_to_an_older_database(db_url):
    db.bind(db_url)
    with db.block() as handle:
        for name in changefeed.trigger_names():
            handle.execute_sql(f"DROP TRIGGER IF EXISTS {name}")
        handle.drop_tables([ReadModelChange])
        migrator = migrations._migrator(handle)
        run_operations(
            migrator.drop_index("webhook_event", "webhook_event_outcome_retry_at"),
            migrator.drop_column("webhook_event", "retry_at"),
        )
        migrations.SchemaVersion.delete().where(migrations.SchemaVersion.version >= 11).execute()  # back to 10
        shop = Project.create(public_id="proj_v10", name="Before the feed")
    assert "read model change feed, inbox retry time" in migrations.migrate_database()
    with db.block():
        Customer.create(project=shop.id, external_user_id="after")
        rows = list(ReadModelChange.select().tuples())
        assert [(r[1], r[3]) for r in rows] == [(shop.id, "after")]
        assert migrations.current_version() == migrations.LATEST
        assert "retry_at" in {c.name for c in db.database.get_columns("webhook_event")}


@pytest.mark.gen_test
async def test_warm_up_loads_the_answers_a_read_would_give(app, project):
    shop = project.project
    add_subscription(add_customer(shop, "w1"), "active")
    several = add_customer(shop, "w2")
    add_subscription(several, "canceled", started_days_ago=1)
    add_subscription(several, "active", started_days_ago=20)  # the current one: it grants access
    add_customer(shop, "w3")  # no subscription
    users = ["w1", "w2", "w3"]
    await hotpath.warm_up()
    hits = hotpath.STATS["hits"]
    warmed = [answer(shop.id, user) for user in users]
    assert hotpath.STATS["hits"] == hits + 3
    hotpath._states.clear()
    assert warmed == [answer(shop.id, user) for user in users]  # read one by one from the database
    assert warmed[1][1]["has_access"] is True and warmed[2] == (True, None)


def test_a_full_read_model_forgets_the_oldest_tenth(app, project, monkeypatch):
    monkeypatch.setattr(hotpath, "CACHE_MAX", 10)
    shop = project.project
    for n in range(12):
        add_subscription(add_customer(shop, f"many-{n}"), "active")
        answer(shop.id, f"many-{n}")
    (state,) = hotpath._states.values()
    kept = sorted(int(user.split("-")[1]) for _, user in state.answers)
    assert kept == list(range(2, 12))  # the 1st and then the 2nd stored were dropped, one at a time
