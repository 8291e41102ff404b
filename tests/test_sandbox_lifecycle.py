"""The subscription lifecycle API, invoices and Stripe Entitlements on a sandbox project, end to end: the
real server, stripe-python reaching the simulator under /sandbox/, and the simulator's events signed and
delivered to POST /api/webhook/{project} through the real verification path (issues 15 and 16)."""

import time

from pulse import db
from pulse.models import WebhookEvent
from tests.live_server import LiveServer
from tests.sandbox_support import CARD_OK, close_clients, sandbox_project  # noqa: F401


def events_of(db_url, project_id):
    """(type, outcome) of every event the project's webhook endpoint took, in arrival order."""
    db.bind(db_url)
    with db.block():
        rows = WebhookEvent.select().where(WebhookEvent.project == project_id).order_by(WebhookEvent.id)
        return [(row.type, row.outcome) for row in rows]


def eventually(check, timeout=15.0):
    """Poll `check()` until it is truthy (the simulator delivers an API call's events after answering it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def has(tenant, feature, user="u1"):
    status, body = tenant.api("GET", f"/api/entitlements/{feature}?external_user_id={user}")
    assert status == 200, body
    return body["has_access"]


def project_row_id(db_url, public_id):
    from pulse.models import Project

    db.bind(db_url)
    with db.block():
        return Project.get(Project.public_id == public_id).id


def test_cancel_resume_change_preview_invoices_and_features_on_a_sandbox_project(db_url):
    with LiveServer(db_url) as server:
        tenant = sandbox_project(server)
        # The tenant's CI defines its prices and attaches Features to their Products, as in the Dashboard.
        for price, amount in (("price_pro_monthly", 2000), ("price_team_monthly", 5000)):
            status, body = tenant.api("POST", "/sandbox/api/prices", {"id": price, "unit_amount": amount})
            assert status == 200 and body["result"]["unit_amount"] == amount, body
        status, body = tenant.api("POST", "/sandbox/api/prices", {"id": "price_pro_monthly", "unit_amount": 1})
        assert (status, body["error"]["code"]) == (409, "price_exists")  # prices are immutable
        for price, key in (("price_pro_monthly", "api_access"), ("price_team_monthly", "api_access")):
            status, body = tenant.api("POST", "/sandbox/api/features/attach", {"price": price, "lookup_key": key})
            assert status == 200 and body["result"]["object"] == "product_feature" and body["events"] == [], body
        assert tenant.api("PUT", "/api/plans/team", {"stripe_price_ids": ["price_team_monthly"]})[0] in (200, 201)

        session = tenant.checkout()
        assert tenant.form(session["url"], action="pay", card=CARD_OK).status_code == 303
        body = tenant.subscription()[1]
        assert (body["status"], body["features"]) == ("active", ["api_access"])
        assert has(tenant, "api_access") is True and has(tenant, "admin_panel") is False

        # A Feature attached later reaches the app through Stripe's entitlements event.
        status, body = tenant.api(
            "POST", "/sandbox/api/features/attach", {"price": "price_team_monthly", "lookup_key": "admin_panel"}
        )
        assert body["events"] == [], body  # nobody subscribes to team yet
        _, listed = tenant.api("GET", "/sandbox/api/features")
        assert [(f["prices"], f["lookup_key"]) for f in listed["data"]][-1] == (["price_team_monthly"], "admin_panel")

        # Preview: Stripe's proration lines (unused time on pro, remaining time on team), then the next period.
        status, preview = tenant.api(
            "POST", "/api/subscription/change/preview", {"external_user_id": "u1", "plan_slug": "team"}
        )
        assert status == 200, preview
        credit, charge, period = (line["amount"] for line in preview["lines"])
        assert [line["proration"] for line in preview["lines"]] == [True, True, False]
        assert -2000 <= credit < -1900 and 4750 < charge <= 5000 and period == 5000
        assert preview["proration_amount"] == credit + charge and preview["amount_due_now"] == 0
        assert preview["next_invoice"]["amount_due"] == 5000 + credit + charge
        status, body = tenant.api(
            "POST", "/api/subscription/change", {"external_user_id": "u1", "stripe_price_id": "price_never_made"}
        )
        assert (status, body["error"]["field"]) == (400, "stripe_price_id")
        assert tenant.subscription()[1]["stripe_price_id"] == "price_pro_monthly"  # previews change nothing

        # The change, invoiced now: the app's answer at once, then Stripe's events through the webhook.
        status, changed = tenant.api(
            "POST",
            "/api/subscription/change",
            {"external_user_id": "u1", "plan_slug": "team", "proration_behavior": "always_invoice"},
        )
        assert status == 200, changed
        assert (changed["plan_slug"], changed["stripe_price_id"]) == ("team", "price_team_monthly")
        assert tenant.subscription()[1]["features"] == ["admin_panel", "api_access"]  # re-read at once
        project_id = project_row_id(db_url, tenant.created["project_id"])
        wanted = ("entitlements.active_entitlement_summary.updated", "processed")
        # The change's summary (admin_panel added) comes last of its events; the checkout's came first.
        assert eventually(lambda: events_of(db_url, project_id).count(wanted) == 2), events_of(db_url, project_id)
        arrived = [kind for kind, _ in events_of(db_url, project_id)]
        assert arrived.count("invoice.paid") == 2 and arrived.count("customer.subscription.updated") >= 1

        status, page = tenant.api("GET", "/api/invoices?external_user_id=u1")
        assert status == 200, page
        update, first = page["data"]
        assert (first["amount_due"], first["status"]) == (2000, "paid")
        assert update["status"] == "paid" and update["amount_paid"] == update["amount_due"] > 2500
        prefix = first["number"].split("-")[0]
        assert (first["number"], update["number"]) == (f"{prefix}-0001", f"{prefix}-0002")
        assert update["stripe_subscription_id"] == changed["stripe_subscription_id"]
        hosted = tenant.http.get(update["hosted_invoice_url"])
        assert hosted.status_code == 200 and update["number"] in hosted.text
        assert update["hosted_invoice_url"].startswith(f"{server.base_url}/sandbox/")

        # Cancel at the period end, resume, then cancel now: access and features end with it.
        status, body = tenant.api("POST", "/api/subscription/cancel", {"external_user_id": "u1"})
        assert status == 200 and (body["status"], body["has_access"]) == ("cancelling", True), body
        assert body["cancel_at"] is not None
        status, body = tenant.api("POST", "/api/subscription/resume", {"external_user_id": "u1"})
        assert status == 200 and (body["status"], body["cancel_at"]) == ("active", None), body
        status, body = tenant.api(
            "POST", "/api/subscription/cancel", {"external_user_id": "u1", "at_period_end": False}
        )
        assert status == 200 and (body["status"], body["has_access"]) == ("cancelled", False), body
        assert eventually(lambda: not has(tenant, "api_access")) and not has(tenant, "admin_panel")
        assert tenant.subscription()[1]["features"] == []
        assert eventually(lambda: events_of(db_url, project_id).count(wanted) == 3), events_of(db_url, project_id)
        took = events_of(db_url, project_id)
        assert [kind for kind, _ in took].count(wanted[0]) == 3  # each processed, none ignored
        assert "customer.subscription.deleted" in [kind for kind, _ in took]


def test_renewals_on_the_clock_are_invoices_with_pending_prorations_and_features_follow(db_url):
    with LiveServer(db_url) as server:
        tenant = sandbox_project(server)
        tenant.api("POST", "/sandbox/api/prices", {"id": "price_team_monthly", "unit_amount": 5000})
        status, body = tenant.api(
            "POST", "/sandbox/api/features/attach", {"price": "price_pro_monthly", "lookup_key": "api_access"}
        )
        assert status == 200, body
        session = tenant.checkout(trial_days=3)
        assert tenant.form(session["url"], action="pay", card=CARD_OK).status_code == 303
        assert tenant.subscription()[1]["features"] == ["api_access"]  # trialing is entitled

        _, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": 4})
        assert "invoice.paid" in answer["events"]
        # Mid-period switch with Stripe's default proration: nothing now, the prorations on the next invoice.
        _, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": 10})
        status, preview = tenant.api(
            "POST",
            "/api/subscription/change/preview",
            {"external_user_id": "u1", "stripe_price_id": "price_team_monthly"},
        )
        assert status == 200 and preview["proration_amount"] > 0, preview
        status, body = tenant.api(
            "POST", "/api/subscription/change", {"external_user_id": "u1", "stripe_price_id": "price_team_monthly"}
        )
        assert status == 200 and body["stripe_price_id"] == "price_team_monthly", body
        assert eventually(lambda: tenant.subscription()[1]["features"] == [])  # team has no Feature
        _, answer = tenant.api("POST", "/sandbox/api/clock/advance", {"days": 25})
        assert answer["events"].count("invoice.paid") == 1, answer

        status, page = tenant.api("GET", "/api/invoices?external_user_id=u1&limit=2")
        assert status == 200 and page["has_more"] is True, page
        renewal, after_trial = page["data"]
        assert after_trial["amount_paid"] == 2000
        # The renewal is the new price plus the prorations the preview showed (to a second's rounding).
        assert abs(renewal["amount_paid"] - preview["next_invoice"]["amount_due"]) <= 2, (renewal, preview)
        _, rest = tenant.api("GET", f"/api/invoices?external_user_id=u1&starting_after={page['next_starting_after']}")
        assert [i["amount_paid"] for i in rest["data"]] == [0] and rest["has_more"] is False  # the trial's

        # Detaching the Feature from team's Product or attaching one changes what the app sees at once.
        status, body = tenant.api(
            "POST", "/sandbox/api/features/attach", {"price": "price_team_monthly", "lookup_key": "exports"}
        )
        assert body["events"] == ["entitlements.active_entitlement_summary.updated"] and body["delivered"] == 1
        assert tenant.subscription()[1]["features"] == ["exports"] and has(tenant, "exports") is True
        status, body = tenant.api(
            "POST", "/sandbox/api/features/detach", {"price": "price_team_monthly", "lookup_key": "exports"}
        )
        assert status == 200 and body["result"]["deleted"] is True, body
        assert body["events"] == ["entitlements.active_entitlement_summary.updated"]
        assert has(tenant, "exports") is False


def test_the_feature_api_answers_only_sandbox_keys_and_checks_its_fields(db_url):
    with LiveServer(db_url) as server:
        tenant = sandbox_project(server)
        for body, expected in (
            ({"price": "price_pro_monthly"}, (422, "missing_field", "lookup_key")),
            ({"lookup_key": "api_access"}, (422, "missing_field", "price")),
            ({"lookup_key": "a/b", "price": "price_pro_monthly"}, (400, "invalid_field", "lookup_key")),
            ({"lookup_key": "api_access", "price": "cus_123"}, (400, "invalid_field", "price")),
        ):
            status, answer = tenant.api("POST", "/sandbox/api/features/attach", body)
            error = answer["error"]
            assert (status, error["code"], error["field"]) == expected, (body, answer)
        status, answer = tenant.api(
            "POST", "/sandbox/api/features/attach", {"product": "prod_unknown", "lookup_key": "api_access"}
        )
        assert (status, answer["error"]["code"]) == (404, "not_found")
        live = server.create_project(
            "Live",
            stripe_secret_key="sk_test_live_project_0000000000",
            stripe_webhook_secret="whsec_live_project_000000000000",
        )
        status, answer = tenant.api("GET", "/sandbox/api/features", key=live["api_key"])
        assert (status, answer["error"]["code"]) == (403, "not_a_sandbox")
