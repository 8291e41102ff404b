"""Issue 15's whole flow in headless Chromium on a fresh server, offline: a sandbox project's checkout
page -> Pay -> signed webhooks -> access -> portal page -> switch plan -> the console's clock past a
failed renewal -> past_due -> unpaid, no access."""

import json
import re

import pytest
from playwright.sync_api import expect, sync_playwright

from pulse import db
from pulse.models import WebhookEvent
from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.live_server import LiveServer

pytestmark = pytest.mark.browser

require_chromium()


def api(server, key, method, path, body=None):
    status, _, answer = server.request(
        method,
        path,
        body=json.dumps(body) if body is not None else None,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    return status, json.loads(answer) if answer else None


def test_sandbox_billing_flow_in_a_real_browser(db_url):
    with LiveServer(db_url) as server:
        created = server.cli("create-project", "Demo", "--sandbox")
        key, project_id, base = created["api_key"], created["project_id"], server.base_url
        assert api(server, key, "PUT", "/api/plans/team", {"stripe_price_ids": ["price_team_monthly"]})[0] in (200, 201)
        status, session = api(
            server,
            key,
            "POST",
            "/api/checkout",
            {
                "external_user_id": "ada",
                "email": "ada@example.test",
                "plan_slug": "pro",
                "stripe_price_id": "price_pro_monthly",
                "trial_days": 7,
                "success_url": f"{base}/status?paid={{CHECKOUT_SESSION_ID}}",
                "cancel_url": f"{base}/status",
            },
        )
        assert status == 200, session
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                # The checkout page: plan, price, trial; Pay with the card whose renewals will fail.
                page.goto(session["url"])
                expect(page.locator("#plan")).to_contain_text("pro")
                expect(page.locator("#price")).to_contain_text("20.00 USD every month")
                expect(page.locator("#trial")).to_contain_text("7 days free")
                page.select_option("select[name=card]", "4000000000000341")
                page.click("button[value=pay]")
                expect(page).to_have_url(re.compile(re.escape(f"{base}/status?paid={session['session_id']}")))

                # The webhooks arrived, signed, through the project's endpoint: access.
                status, sub = api(server, key, "GET", "/api/subscription?external_user_id=ada")
                assert status == 200
                assert (sub["status"], sub["has_access"], sub["plan_slug"]) == ("trialing", True, "pro")
                db.bind(db_url)
                with db.block():
                    processed = {e.type for e in WebhookEvent.select() if e.outcome == "processed"}
                assert {"customer.subscription.created", "checkout.session.completed"} <= processed

                # The portal page: switch plan; plan_slug follows.
                status, portal = api(
                    server, key, "POST", "/api/portal", {"external_user_id": "ada", "return_url": f"{base}/status"}
                )
                assert status == 200, portal
                page.goto(portal["url"])
                expect(page.locator(".subscription .plan")).to_contain_text("price_pro_monthly")
                page.select_option("select[name=price]", "price_team_monthly")
                page.click("button[value=switch]")
                expect(page.get_by_role("status")).to_contain_text("switch")
                expect(page.locator(".subscription .plan")).to_contain_text("team")
                status, sub = api(server, key, "GET", "/api/subscription?external_user_id=ada")
                assert (sub["plan_slug"], sub["stripe_price_id"]) == ("team", "price_team_monthly")

                # The console: the Sandbox badge, and the clock page moving past a failed renewal.
                page.goto(f"{base}/console/p/{project_id}/sandbox")
                page.fill("input[name=email]", created["admin_email"])
                page.fill("input[name=password]", created["admin_password"])
                page.click("button[type=submit]")
                expect(page).to_have_url(f"{base}/console/p/{project_id}/sandbox")
                expect(page.locator(".badge-sandbox")).to_have_text("Sandbox")
                page.select_option("select[name=after_retries]", "unpaid")
                page.click("form:has(input[value=after_retries]) button")
                expect(page.get_by_role("status")).to_contain_text("after retries")
                page.select_option("select[name=days]", "14")
                page.click("form:has(input[value=advance]) button")
                expect(page.locator("tr .status").first).to_have_text("past_due")
                status, sub = api(server, key, "GET", "/api/subscription?external_user_id=ada")
                assert sub["status"] == "past_due"
                page.select_option("select[name=days]", "31")
                page.click("form:has(input[value=advance]) button")
                expect(page.locator("tr .status").first).to_have_text("unpaid")
                status, sub = api(server, key, "GET", "/api/subscription?external_user_id=ada")
                assert (sub["status"], sub["has_access"]) == ("unpaid", False)
                # Every console page of the project says Sandbox.
                page.goto(f"{base}/console/p/{project_id}/")
                expect(page.locator(".badge-sandbox")).to_be_visible()

                # SPEC 5 on a phone (QA #8): the clock page, with its subscription, and the hosted pages fit 390 px.
                page.set_viewport_size({"width": 390, "height": 844})
                for url in (session["url"], portal["url"], f"{base}/console/p/{project_id}/sandbox"):
                    page.goto(url)
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= 390, (url, width)
                expect(page.locator("tr[data-id] .status").first).to_have_text("unpaid")  # the row is on the page
            finally:
                browser.close()
