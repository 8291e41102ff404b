"""What one checkout costs (issue 14): Stripe round trips and database statements, and the shortcuts' limits."""

import asyncio
import logging
from datetime import timedelta

import pytest

from pulse import billing, checkout, db, plans
from pulse.models import CheckoutLease, PlanPrice
from tests import fake_stripe_objects as objects
from tests.billing_support import add_customer, checkout_body
from tests.support import body_of


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides()


def stripe_calls(fake):
    return [(method, path.split("/cs_")[0]) for method, path, _, _ in fake.requests]


def open_sessions(fake):
    return [s["id"] for s in fake.sessions.values() if s["status"] == "open"]


class Statements(logging.Handler):
    """Counts the SQL statements Peewee sends (it logs each one at DEBUG on the `peewee` logger)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.sql = []

    def emit(self, record):
        self.sql.append(str(record.msg[0] if isinstance(record.msg, tuple) else record.msg))

    def __enter__(self):
        logger = logging.getLogger("peewee")
        self.level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("peewee")
        logger.removeHandler(self)
        logger.setLevel(self.level)


@pytest.mark.gen_test
async def test_a_new_users_checkout_is_two_stripe_calls_and_few_statements(api, fake_stripe, project):
    assert (await api("POST", "/api/checkout", checkout_body(external_user_id="warm"))).code == 200  # learns the price
    fake_stripe.requests.clear()
    with Statements() as statements:
        response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 200, response.body
    # No list of open sessions: the customer is this request's own and no checkout of the user ran before.
    assert stripe_calls(fake_stripe) == [("POST", "/v1/customers"), ("POST", "/v1/checkout/sessions")]
    # The key (a write moved the generation), the catalog, the customer, its insert, the lease, its insert, the
    # customer and its subscriptions under the lease, the release (BEGINs included; 14 before issue 14's pass).
    assert len(statements.sql) <= 11, statements.sql
    with db.block():
        assert PlanPrice.select().count() == 1


@pytest.mark.gen_test
async def test_a_stored_customer_without_any_lease_row_still_gets_its_open_sessions_expired(api, fake_stripe, project):
    # Opened by a PaymentPulse that deleted its leases on release (before issue 14), or by hand in the Dashboard.
    customer = add_customer(project.project, "user-1")
    fake_stripe.customers[customer.stripe_customer_id] = objects.customer({"email": customer.email})
    fake_stripe.customers[customer.stripe_customer_id]["id"] = customer.stripe_customer_id
    old = fake_stripe._store(
        fake_stripe.sessions,
        objects.checkout_session(
            {"mode": "subscription", "customer": customer.stripe_customer_id, "success_url": "https://app.test/"}
        ),
    )
    response = await api("POST", "/api/checkout", checkout_body())
    assert response.code == 200, response.body
    assert open_sessions(fake_stripe) == [body_of(response)["session_id"]]
    assert fake_stripe.session(old["id"])["status"] == "expired"


@pytest.mark.gen_test
async def test_a_released_lease_row_makes_the_next_checkout_look_for_open_sessions(api, fake_stripe):
    first = body_of(await api("POST", "/api/checkout", checkout_body()))
    with db.block():
        (lease,) = CheckoutLease.select()
    assert lease.expires_at < db.utcnow()  # released, and kept
    fake_stripe.requests.clear()
    second = body_of(await api("POST", "/api/checkout", checkout_body()))
    assert ("GET", "/v1/checkout/sessions") in stripe_calls(fake_stripe)
    assert open_sessions(fake_stripe) == [second["session_id"]] != [first["session_id"]]


@pytest.mark.gen_test
async def test_a_known_price_is_not_relearnt_and_a_conflicting_slug_is_still_refused(api, fake_stripe, project):
    assert (await api("POST", "/api/checkout", checkout_body())).code == 200
    with db.block():
        assert plans.catalog_of(project.project) == {"price_pro_monthly": "pro"}
    response = await api("POST", "/api/checkout", checkout_body(external_user_id="user-2", plan_slug="team"))
    assert response.code == 400 and body_of(response)["error"]["field"] == "plan_slug"
    fake_stripe.requests.clear()
    assert (await api("POST", "/api/checkout", checkout_body(external_user_id="user-3"))).code == 200
    with db.block():
        assert plans.catalog_of(project.project) == {"price_pro_monthly": "pro"}


@pytest.mark.gen_test(timeout=30)
async def test_a_session_opened_by_the_holder_we_waited_for_is_expired_even_for_our_new_customer(
    api, fake_stripe, project
):
    with db.block():  # another process is checking this user out
        CheckoutLease.create(
            project=project.project,
            external_user_id="user-1",
            token="other",
            expires_at=db.utcnow() + timedelta(seconds=30),
        )

    async def other_process():
        """Once our request stored the user's new Stripe customer: open a session for it, then release."""
        while True:
            with db.block():
                customer = billing.find_customer(project.project, "user-1")
            if customer is not None and customer.stripe_customer_id:
                break
            await asyncio.sleep(0.01)
        session = fake_stripe._store(
            fake_stripe.sessions,
            objects.checkout_session(
                {"mode": "subscription", "customer": customer.stripe_customer_id, "success_url": "https://app.test/"}
            ),
        )
        with db.block():
            CheckoutLease.update(expires_at=checkout.RELEASED).where(CheckoutLease.token == "other").execute()
        return session["id"]

    response, theirs = await asyncio.gather(api("POST", "/api/checkout", checkout_body()), other_process())
    assert response.code == 200, response.body
    assert fake_stripe.session(theirs)["status"] == "expired"
    assert open_sessions(fake_stripe) == [body_of(response)["session_id"]]


def test_the_already_subscribed_check_reads_the_customers_rows_not_the_projects(tmp_path):
    """Issue 14: filtered by project in SQL, SQLite walked every subscription of the project (55 % of a checkout)."""
    from pulse.migrations import migrate_database
    from pulse.models import Customer, Project, Subscription

    db.bind(f"sqlite:///{tmp_path / 'plan.db'}")
    migrate_database()
    handle = db.database.obj
    steps = []
    try:
        with db.block():
            project = Project.create(public_id="proj_cost", name="Cost")
            ada = Customer.create(project=project, external_user_id="ada", email="ada@example.test")
            Subscription.create(
                project=project,
                customer=ada,
                stripe_subscription_id="sub_ada",
                stripe_status="canceled",
                status="cancelled",
            )

            def vm_steps():
                count = [0]
                handle.connection().set_progress_handler(lambda: count.__setitem__(0, count[0] + 1) or 0, 10)
                assert not billing.has_access_subscription(ada, project)  # a miss reads every candidate
                handle.connection().set_progress_handler(None, 10)
                return count[0]

            for size in (10, 3000):
                while Subscription.select().count() < size:
                    other = Customer.create(
                        project=project,
                        external_user_id=f"u{size}-{len(steps)}-x" + str(Subscription.select().count()),
                        email="x@example.test",
                    )
                    Subscription.create(
                        project=project,
                        customer=other,
                        stripe_subscription_id=f"sub_{other.id}",
                        stripe_status="active",
                        status="active",
                        started_at=db.utcnow(),
                    )
                steps.append(vm_steps())
    finally:
        db.database.close()
    # SQLite's virtual-machine steps (every 10), not time: an index lookup stays flat as the project grows.
    assert steps[1] <= steps[0] * 2, steps
