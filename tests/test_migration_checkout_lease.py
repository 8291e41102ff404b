"""Migration 5 adds the checkout_lease table to a database created before it, keeping its data."""

from pulse import db, migrations
from pulse.models import CheckoutLease, Customer, Project


def test_step_5_creates_the_checkout_lease_table_on_an_older_database(db_url):
    db.bind(db_url)
    ((number, name, step),) = [s for s in migrations.STEPS if s[0] == 5]
    assert name == "checkout lease: one checkout at a time per user"
    with db.block() as database:
        project = Project.create(public_id="proj_lease", name="Old")
        Customer.create(project=project, external_user_id="u1", email="u1@x.test")
        database.drop_tables([CheckoutLease])  # as before version 5
        step(database, migrations._migrator(database))  # what migrate_database() runs for it
        assert database.table_exists("checkout_lease")
        CheckoutLease.create(project=project, external_user_id="u1", token="t", expires_at=db.utcnow())
        assert Customer.get(Customer.external_user_id == "u1").email == "u1@x.test"
        step(database, migrations._migrator(database))  # safe to run twice
