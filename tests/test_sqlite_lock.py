"""SQLite's version of an outage: another process holds the write lock (a backup, an open `sqlite3` shell).

Writes wait busy_timeout, then answer 503 `database_unavailable` (a retry will do), never an
unhandled 500; reads go on (WAL); once the lock is released the same process writes again.
"""

import sqlite3

import pytest

from pulse import db
from tests.billing_support import checkout_body
from tests.support import body_of


@pytest.fixture
def db_url(tmp_path):
    from pulse.migrations import migrate_database

    url = f"sqlite:///{tmp_path / 'pulse.db'}"
    db.bind(url)
    migrate_database()
    db.database.close()
    return url


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides(stripe_max_retries=0)


@pytest.mark.gen_test(timeout=60)
async def test_write_lock_held_elsewhere_is_503_and_clears(db_url, api, app, project, fake_stripe, monkeypatch):
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)  # keep the test short; the default is 10 s
    db.database.close()
    db.bind(db_url)
    holder = sqlite3.connect(db_url[len("sqlite:///") :], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, as `sqlite3 pulse.db` in a transaction holds it
        response = await api("POST", "/api/checkout", checkout_body(), request_timeout=20)
        assert response.code == 503, response.body
        assert body_of(response)["error"]["code"] == "database_unavailable"
        # Reads are not blocked (WAL): health and the hot path answer.
        assert (await api("GET", "/api/health", key="")).code == 200
        assert (await api("GET", "/api/subscription?external_user_id=user-1")).code == 404
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    response = await api("POST", "/api/checkout", checkout_body(), request_timeout=20)
    assert response.code == 200, response.body


@pytest.mark.gen_test(timeout=60)
async def test_webhook_waits_out_a_held_lock_once_then_503_and_the_retry_applies(
    db_url, app, make_project, fake_stripe, http_client, base_url, monkeypatch
):
    from pulse import webhooks
    from tests.stripe_events import body_of_event, event, new_subscription, sign

    secret = "whsec_locktest_" + "c" * 20
    hooked = make_project(name="Locked", stripe_webhook_secret=secret)
    _, sub = new_subscription(fake_stripe, "user-lock", project_id=hooked.project.public_id)
    body = body_of_event(event("customer.subscription.updated", sub))
    attempts = []
    original_transaction = webhooks.transaction
    monkeypatch.setattr(webhooks, "transaction", lambda: attempts.append(1) or original_transaction())
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    db.database.close()
    db.bind(db_url)

    async def deliver():
        return await http_client.fetch(
            f"{base_url}/api/webhook/{hooked.project.public_id}",
            method="POST",
            body=body,
            headers={"Stripe-Signature": sign(body, secret)},
            raise_error=False,
            request_timeout=30,
        )

    holder = sqlite3.connect(db_url[len("sqlite:///") :], isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        response = await deliver()
        assert response.code == 503, response.body
        assert body_of(response)["error"]["code"] == "database_unavailable"
        assert len(attempts) == 1  # waited for the lock once: no retries stalling the loop again
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    response = await deliver()
    assert response.code == 200 and body_of(response).get("duplicate") is None, response.body
    read = await http_client.fetch(
        f"{base_url}/api/subscription?external_user_id=user-lock",
        headers={"X-API-Key": hooked.api_key.api_key},
        raise_error=False,
    )
    assert read.code == 200 and body_of(read)["status"] == "active"
