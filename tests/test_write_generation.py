"""The write generation (pulse.db.WriteGeneration) that retires the in-process caches of keys and reads."""

from urllib.parse import quote

import pytest

from pulse import apikeys, db
from pulse.models import ApiKey, CheckoutLease, Customer, Subscription, WebhookEvent
from pulse.status import map_status
from tests.billing_support import add_customer, add_subscription
from tests.support import body_of


def test_writes_and_commits_move_it_and_reads_do_not(app, project):
    with db.block() as handle:
        before = handle.write_generation()
        Customer.select().count()
        assert handle.write_generation() == before
        Customer.update(email="x@example.test").where(Customer.id == 0).execute()
        after_write = handle.write_generation()
        assert after_write > before
        with handle.atomic():
            Customer.select().count()
        assert handle.write_generation() > after_write  # the commit


@pytest.mark.gen_test
async def test_a_write_in_this_process_shows_at_once_despite_the_read_cache(api, project):
    customer = add_customer(project.project, "user-1")
    subscription = add_subscription(customer, "active")
    path = "/api/subscription?external_user_id=" + quote("user-1")
    assert body_of(await api("GET", path))["has_access"] is True  # now cached for up to a second
    with db.block():
        Subscription.update(status=map_status("canceled"), stripe_status="canceled").where(
            Subscription.id == subscription.id
        ).execute()
    assert body_of(await api("GET", path))["has_access"] is False


def test_a_write_retires_a_cached_key_lookup(app, project):
    with db.block():
        key = project.api_key.api_key
        assert apikeys.authenticate(key) is not None  # now cached
        # A direct write, not apikeys.revoke (which clears the cache itself).
        ApiKey.update(revoked_at=db.utcnow()).execute()
        assert apikeys.authenticate(key) is None


def test_storing_a_webhook_delivery_leaves_it_alone_and_a_mixed_transaction_moves_it(app, project):
    from pulse import webhooks
    from tests import stripe_events

    event = stripe_events.event("customer.updated", {"id": "cus_gen", "object": "customer"})
    with db.block() as handle:
        before = handle.write_generation()
    assert webhooks.enqueue(project.project, event, stripe_events.body_of_event(event))["queued"]
    assert webhooks.enqueue(project.project, event, stripe_events.body_of_event(event))["duplicate"]
    with db.block() as handle:
        # A burst of deliveries must not retire every cached key and answer on each insert.
        assert handle.write_generation() == before
        with handle.atomic():
            WebhookEvent.update(error="x").where(WebhookEvent.id == 0).execute()
            Customer.update(email="y@example.test").where(Customer.id == 0).execute()
        assert handle.write_generation() > before


def test_checkout_leases_leave_it_alone(app, project):
    with db.block() as handle:
        before = handle.write_generation()
        with handle.atomic():
            CheckoutLease.create(project=project.project, external_user_id="u", token="t", expires_at=db.utcnow())
        CheckoutLease.update(token="u").where(CheckoutLease.token == "t").execute()
        CheckoutLease.delete().where(CheckoutLease.token == "u").execute()
        # Every checkout takes and releases one: a burst must not retire every cached key and answer.
        assert handle.write_generation() == before
