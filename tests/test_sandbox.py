"""Sandbox projects end to end on the real server: checkout page -> signed webhooks -> access, the portal,
the clock, and the rules that keep sandbox and live apart (SPEC 8, issue 15)."""

import dataclasses
import json
import subprocess
import sys

import pytest

from pulse import db
from pulse.models import WebhookEvent
from tests.live_server import ROOT, LiveServer
from tests.sandbox_support import CARD_FAILS_LATER, CARD_OK, Tenant, client, close_clients, sandbox_project  # noqa: F401


def test_checkout_page_pay_sends_signed_webhooks_and_grants_access(db_url):
    with LiveServer(db_url) as server:
        tenant = sandbox_project(server)
        assert tenant.key.startswith("pp_test_") and tenant.created["sandbox"] is True
        session = tenant.checkout(trial_days=14)
        assert session["url"].startswith(f"{server.base_url}/sandbox/{tenant.created['project_id']}/checkout/cs_test_")
        page = tenant.http.get(session["url"])
        assert page.status_code == 200
        assert "pro" in page.text and "20.00 USD every month" in page.text and "14 days free" in page.text
        assert "Sandbox" in page.text

        # Decline keeps the session open and creates nothing; Cancel goes back to cancel_url.
        declined = tenant.form(session["url"], action="decline")
        assert declined.status_code == 402 and "declined" in declined.text
        assert tenant.subscription()[0] == 404
        canceled = tenant.form(session["url"], action="cancel")
        assert (canceled.status_code, canceled.headers["location"]) == (303, "http://app.test/pricing")

        paid = tenant.form(session["url"], action="pay", card=CARD_OK)
        assert paid.status_code == 303
        assert paid.headers["location"] == f"http://app.test/welcome?s={session['session_id']}"
        status, body = tenant.subscription()
        assert status == 200 and (body["status"], body["has_access"], body["plan_slug"]) == ("trialing", True, "pro")
        db.bind(db_url)
        with db.block():
            events = list(WebhookEvent.select().order_by(WebhookEvent.id))
        kinds = [e.type for e in events]
        # Stripe's order, each through POST /api/webhook/{project} and its signature check.
        assert kinds == [
            "customer.updated",
            "customer.subscription.created",
            "invoice.created",
            "invoice.finalized",
            "invoice.paid",
            "invoice.payment_succeeded",
            "checkout.session.completed",
        ]
        applied = {e.type: e.outcome for e in events}
        assert applied["customer.subscription.created"] == "processed"
        assert applied["checkout.session.completed"] in ("processed", "duplicate", "ignored")
        assert all(e.project_id is not None for e in events)
        # A paid session cannot be paid twice.
        again = tenant.form(session["url"], action="pay", card=CARD_OK)
        assert again.status_code == 400 and "complete" in again.text


def test_portal_switch_cancel_resume_and_pause_send_stripes_events(db_url):
    with LiveServer(db_url) as server:
        tenant = sandbox_project(server)
        assert tenant.api("PUT", "/api/plans/team", {"stripe_price_ids": ["price_team_monthly"]})[0] in (200, 201)
        session = tenant.checkout()
        assert tenant.form(session["url"], action="pay", card=CARD_OK).status_code == 303
        assert tenant.subscription()[1]["status"] == "active"
        status, portal = tenant.api("POST", "/api/portal", {"external_user_id": "u1", "return_url": "http://app.test/"})
        assert status == 200 and "/portal/bps_" in portal["url"]
        sub_id = tenant.subscription()[1]["stripe_subscription_id"]
        page = tenant.http.get(portal["url"])
        assert "price_team_monthly" in page.text and "Cancel at period end" in page.text

        switched = tenant.form(portal["url"], action="switch", subscription=sub_id, price="price_team_monthly")
        assert switched.status_code == 303
        body = tenant.subscription()[1]
        assert (body["plan_slug"], body["stripe_price_id"]) == ("team", "price_team_monthly")

        assert tenant.form(portal["url"], action="cancel", subscription=sub_id).status_code == 303
        body = tenant.subscription()[1]
        assert body["cancel_at"] is not None and body["has_access"] is True
        assert tenant.form(portal["url"], action="resume", subscription=sub_id).status_code == 303
        assert tenant.subscription()[1]["cancel_at"] is None

        assert tenant.form(portal["url"], action="pause_collection", subscription=sub_id).status_code == 303
        assert tenant.subscription()[1]["pause_collection"]["behavior"] == "void"
        assert tenant.form(portal["url"], action="unpause_collection", subscription=sub_id).status_code == 303
        assert tenant.subscription()[1]["pause_collection"] is None
        # Another customer's subscription cannot be changed through this portal session.
        other = tenant.form(portal["url"], action="cancel", subscription="sub_someone_else")
        assert other.status_code == 404


def test_clock_failed_renewal_goes_past_due_then_unpaid_on_stripes_retry_schedule(db_url):
    with LiveServer(db_url) as server:
        tenant = sandbox_project(server)
        session = tenant.checkout(trial_days=7)
        assert tenant.form(session["url"], action="pay", card=CARD_FAILS_LATER).status_code == 303
        assert tenant.subscription()[1]["status"] == "trialing"
        status, answer = tenant.api("POST", "/sandbox/api/settings", {"after_retries": "unpaid"})
        assert status == 200, answer

        status, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": 8})
        assert status == 200, answer
        assert "invoice.payment_failed" in answer["events"] and answer["delivered"] == len(answer["events"])
        body = tenant.subscription()[1]
        assert body["status"] == "past_due"
        for days, expected in ((3, "past_due"), (5, "past_due"), (7, "unpaid")):
            status, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": days})
            assert answer["events"] == ["invoice.payment_failed", "customer.subscription.updated"], answer
            assert tenant.subscription()[1]["status"] == expected
        assert tenant.subscription()[1]["has_access"] is False
        status, clock = tenant.api("GET", "/sandbox/api/clock")
        assert clock["advanced_seconds"] == 23 * 86400


def test_clock_trial_end_renewal_and_scheduled_cancel(db_url):
    with LiveServer(db_url) as server:
        tenant = sandbox_project(server)
        session = tenant.checkout(trial_days=3)
        assert tenant.form(session["url"], action="pay", card=CARD_OK).status_code == 303
        _, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": 4})
        assert "invoice.paid" in answer["events"] and tenant.subscription()[1]["status"] == "active"
        _, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": 30})
        assert answer["events"].count("invoice.paid") == 1
        sub_id = tenant.subscription()[1]["stripe_subscription_id"]
        status, answer = tenant.api("POST", f"/sandbox/api/subscriptions/{sub_id}/cancel")
        assert status == 200 and answer["events"] == ["customer.subscription.updated"]
        assert tenant.subscription()[1]["has_access"] is True
        _, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": 31})
        assert answer["events"] == ["customer.subscription.deleted"]
        assert tenant.subscription()[1]["status"] == "cancelled"  # PaymentPulse's word (SPEC 3.3)

        # A trial without a card on file ends paused (trial_settings: pause), until resumed.
        session = tenant.checkout(user="u2", trial_days=3)
        status, paid = tenant.api(
            "POST", f"/sandbox/api/checkout_sessions/{session['session_id']}/pay", {"card": CARD_OK}
        )
        assert status == 200 and paid["result"]["status"] == "trialing"
        customer = paid["result"]["customer"]
        assert tenant.api("POST", f"/sandbox/api/customers/{customer}/card", {"card": "none"})[0] == 200
        _, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": 4})
        assert "customer.subscription.paused" in answer["events"]
        assert tenant.subscription("u2")[1]["status"] == "paused"


def test_state_survives_a_restart_and_serves_every_process(db_url):
    server = LiveServer(db_url, processes=2).start()
    try:
        tenant = sandbox_project(server)
        session = tenant.checkout()
        assert tenant.form(session["url"], action="pay", card=CARD_OK).status_code == 303
    finally:
        server.stop()
    with LiveServer(db_url) as server:
        tenant.server, tenant.http = server, client(server)
        status, listing = tenant.api("GET", "/sandbox/api/subscriptions")
        assert status == 200 and [s["status"] for s in listing["data"]] == ["active"]
        assert tenant.subscription()[1]["has_access"] is True


def test_live_keys_never_reach_the_simulator_and_sandboxes_never_mix(db_url):
    with LiveServer(db_url) as server:
        one, two = sandbox_project(server, "One"), sandbox_project(server, "Two")
        live = Tenant(
            server,
            server.create_project(
                "Live",
                stripe_secret_key="sk_test_live_project_0000000000",
                stripe_webhook_secret="whsec_live_project_000000000000",
            ),
        )
        assert live.key.startswith("pp_live_")
        # The sandbox API answers only a sandbox project's pp_test_ key.
        status, body = live.api("GET", "/sandbox/api/clock")
        assert (status, body["error"]["code"]) == (403, "not_a_sandbox")
        assert live.api("GET", "/sandbox/api/clock", key="pp_test_" + "x" * 40)[0] == 401
        # The simulator's Stripe API answers only the project's own simulator key.
        for project_id in (one.created["project_id"], live.created["project_id"]):
            answer = live.http.get(
                f"/sandbox/{project_id}/v1/customers",
                headers={"Authorization": "Bearer sk_test_live_project_0000000000"},
            )
            assert answer.status_code == 401 and answer.json()["error"]["type"] == "invalid_request_error"

        session = one.checkout()
        assert one.form(session["url"], action="pay", card=CARD_OK).status_code == 303
        assert two.api("GET", "/sandbox/api/subscriptions")[1]["data"] == []
        assert two.subscription()[0] == 404
        status, body = two.api("POST", f"/sandbox/api/checkout_sessions/{session['session_id']}/pay", {})
        assert status == 404
        # Another project's hosted page URL under this project's prefix is not found.
        wrong = session["url"].replace(one.created["project_id"], two.created["project_id"])
        assert one.http.get(wrong).status_code == 404


def run_cli(server, *args):
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_keeps_sandbox_and_live_credentials_apart(db_url):
    server = LiveServer(db_url)
    done = run_cli(server, "create-project", "Mixed", "--sandbox", "--stripe-secret-key", "sk_test_x" * 3)
    assert done.returncode == 2 and "sandbox" in done.stderr
    done = run_cli(
        server,
        "create-project",
        "Live",
        "--admin-email",
        "a@live.test",
        "--stripe-secret-key",
        "sk_test_sandbox_proj_x_abc",
    )
    assert done.returncode == 2 and "sandbox" in done.stderr
    sandbox = server.cli("create-project", "Demo", "--sandbox")
    assert sandbox["admin_email"] == f"admin+{sandbox['project_id'].lower()}@sandbox.test"
    assert sandbox["api_key"].startswith("pp_test_")
    done = run_cli(server, "set-stripe", sandbox["project_id"], "--secret-key", "sk_live_" + "1" * 24)
    assert done.returncode == 2 and "simulator" in done.stderr
    live = server.cli("create-project", "Live", "--admin-email", "a@live.test")
    done = run_cli(
        server, "set-stripe", live["project_id"], "--secret-key", f"sk_test_sandbox_{sandbox['project_id']}_abc"
    )
    assert done.returncode == 2
    assert run_cli(server, "create-project", "NoAdmin").returncode == 2


@pytest.fixture
def in_process(db_url):
    db.bind(db_url)
    return db_url


def test_routing_rules_are_structural(in_process):
    """Where each project's Stripe calls go, whatever the deployment settings say."""
    from pulse import billing, projects
    from pulse.config import load_config
    from pulse.models import Project
    from pulse.security import SecretBox

    config = load_config(
        environ={},
        database_url=in_process,
        secret_key="x" * 32,
        port=8123,
        stripe_secret_key="sk_live_deployment_000000000000",
        stripe_api_base="https://api.stripe.com",
    )
    box = SecretBox(config.secret_key)
    with db.block():
        sandbox = projects.create_project("S", "s@x.test", box, admin_password="password123", sandbox=True).project
        live = projects.create_project("L", "l@x.test", box, admin_password="password123").project
        key = billing.secret_key_for(sandbox, box, config)
        assert key.startswith(f"sk_test_sandbox_{sandbox.public_id}_")
        assert billing.api_base_for(config, key) == f"http://127.0.0.1:8123/sandbox/{sandbox.public_id}"
        # The live project falls back to the deployment key and goes to Stripe only.
        assert billing.secret_key_for(live, box, config) == "sk_live_deployment_000000000000"
        assert billing.api_base_for(config, billing.secret_key_for(live, box, config)) == "https://api.stripe.com"
        with pytest.raises(projects.SandboxRule):
            projects.set_stripe(sandbox, box, secret_key="sk_live_" + "1" * 24)
        with pytest.raises(projects.SandboxRule):
            projects.set_stripe(live, box, secret_key=key)
        # Even written straight into the table, a mixed key is never used.
        Project.update(stripe_secret_key=box.encrypt(key)).where(Project.id == live.id).execute()
        Project.update(stripe_secret_key=box.encrypt("sk_live_" + "2" * 24)).where(Project.id == sandbox.id).execute()
        live, sandbox = Project.get_by_id(live.id), Project.get_by_id(sandbox.id)
        for project in (sandbox, live):
            with pytest.raises(billing.StripeNotConfigured):
                billing.secret_key_for(project, box, config)
        # Nor does a simulator key configured deployment-wide serve a live project.
        Project.update(stripe_secret_key=None).where(Project.id == live.id).execute()
        sneaky = dataclasses.replace(config, stripe_secret_key=key)
        with pytest.raises(billing.StripeNotConfigured):
            billing.secret_key_for(Project.get_by_id(live.id), box, sneaky)


def test_create_project_sandbox_json(db_url):
    """`create-project --sandbox --json` prints one JSON object (the README's quick start pipes it). Run twice
    (`make demo` twice), each project has its own new admin account and prints its password: sandboxes
    handed to different developers never share a login."""
    server = LiveServer(db_url)
    created = []
    for _ in range(2):
        done = run_cli(server, "create-project", "Demo", "--sandbox", "--json")
        assert done.returncode == 0, done.stderr
        created.append(json.loads(done.stdout))
        assert set(created[-1]) >= {"project_id", "api_key", "admin_email", "admin_password", "sandbox"}
    assert created[0]["admin_email"] != created[1]["admin_email"]
    done = run_cli(server, "create-project", "Demo", "--sandbox")
    assert done.returncode == 0 and "admin password: " in done.stdout and "sign in as admin+proj_" in done.stdout


def test_real_stripes_deployment_endpoint_never_routes_to_a_sandbox_project(in_process):
    """An event on POST /api/webhook (real Stripe) naming a sandbox project, by metadata or customer, has no project."""
    from pulse import events, projects
    from pulse.models import Customer
    from pulse.security import SecretBox

    box = SecretBox("x" * 32)
    with db.block():
        sandbox = projects.create_project("S", "s@x.test", box, admin_password="password123", sandbox=True).project
        live = projects.create_project("L", "l@x.test", box, admin_password="password123").project
        Customer.create(project=sandbox, external_user_id="u1", stripe_customer_id="cus_sandboxed")
        Customer.create(project=live, external_user_id="u1", stripe_customer_id="cus_live")

        def routed(metadata, customer):
            return events.route(
                {
                    "type": "customer.updated",
                    "data": {"object": {"id": customer, "object": "customer", "customer": None, "metadata": metadata}},
                }
            )

        assert routed({"pulse_project_id": sandbox.public_id}, "cus_x") is None
        assert routed({}, "cus_sandboxed") is None
        assert routed({"pulse_project_id": live.public_id}, "cus_x").id == live.id
        assert routed({}, "cus_live").id == live.id
