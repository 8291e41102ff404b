"""End to end in headless Chromium: the real server in a subprocess, the fake Stripe, a tenant admin's tasks."""

import asyncio
import csv
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from tests import stripe_events
from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.fake_stripe import FakeStripe
from tests.live_server import ROOT, LiveServer

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
require_chromium()
PASSWORD = "browser test password"
WEBHOOK_SECRET = "whsec_browser_test_secret_0123456789"


class ThreadedFakeStripe:
    """The fake Stripe on its own event loop in a thread, so a synchronous test can drive the browser."""

    def __enter__(self):
        self.fake = FakeStripe()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "fake Stripe did not start"
        return self.fake

    async def _main(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.fake.start()
        self._ready.set()
        await self._stop.wait()
        await self.fake.stop()

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def cli(env, *args):
    """Run `run.py` like an operator would; returns its --json output."""
    done = subprocess.run(
        [sys.executable, "run.py", *args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def send_event(server, project_id, event):
    body = stripe_events.body_of_event(event)
    status, _, answer = server.request(
        "POST",
        f"/api/webhook/{project_id}",
        body=body,
        headers={"Content-Type": "application/json", "Stripe-Signature": stripe_events.sign(body, WEBHOOK_SECRET)},
    )
    return status, answer


def api_status(server, key, external_user_id):
    status, _, _ = server.request(
        "GET", f"/api/subscription?external_user_id={external_user_id}", headers={"X-API-Key": key}
    )
    return status


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


@pytest.fixture
def stack(db_url):
    """(server, project json, fake Stripe): a project seeded by the CLI, one good and one failed webhook."""
    with ThreadedFakeStripe() as fake:
        server = LiveServer(
            db_url,
            env={"PULSE_STRIPE_API_BASE": fake.url, "PULSE_STRIPE_MAX_RETRIES": "0", "PULSE_STRIPE_TIMEOUT": "5"},
        )
        created = cli(
            server.env,
            "create-project",
            "Acme Browser",
            "--admin-email",
            "owner@acme.test",
            "--admin-password",
            PASSWORD,
            "--stripe-secret-key",
            "sk_test_browser_" + "0" * 20,
            "--stripe-webhook-secret",
            WEBHOOK_SECRET,
        )
        project_id = created["project_id"]
        with server:
            for user in ("bob", "carol"):
                session, _ = stripe_events.new_subscription(fake, user, project_id=project_id)
                status, answer = send_event(
                    server, project_id, stripe_events.event("checkout.session.completed", session)
                )
                assert status == 200, answer
            # Stripe is down while alice's checkout arrives: the event is stored as failed.
            session, _ = stripe_events.new_subscription(fake, "alice", project_id=project_id)
            fake.fail_next(1, status=500, path="/v1/subscriptions")
            status, _ = send_event(server, project_id, stripe_events.event("checkout.session.completed", session))
            assert status == 500
            yield server, created, fake


def test_tenant_admin_tasks_in_a_real_browser(stack, tmp_path):
    server, created, fake = stack
    project_id, old_key = created["project_id"], created["api_key"]
    base = server.base_url
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
            page = context.new_page()
            errors = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

            # Signing in from a deep link comes back to it.
            page.goto(f"{base}/console/p/{project_id}/customers")
            expect(page).to_have_url(f"{base}/console/login?next=%2Fconsole%2Fp%2F{project_id}%2Fcustomers")
            shot(page, "01-login")
            page.fill("input[name=email]", "owner@acme.test")
            page.fill("input[name=password]", "wrong password")
            page.click("button[type=submit]")
            expect(page.get_by_role("alert")).to_have_text("Incorrect email or password.")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{base}/console/p/{project_id}/customers")

            # Dashboard: counts, chart, the failed webhook.
            page.click("nav.tabs >> text=Dashboard")
            expect(page.locator(".stat", has_text="active")).to_contain_text("2")
            # Two wide charts: 12 weeks of starts and 12 months of MRR (the seeded prices give MRR).
            expect(page.locator("svg.chart-wide rect")).to_have_count(24)
            expect(page.locator("#revenue .stat", has_text="MRR")).to_contain_text("USD")
            for i in range(2):
                expect(page.locator("svg.chart-narrow").nth(i)).to_be_hidden()  # the phone variants
            expect(page.locator("text=Recent failures").locator("..")).to_contain_text("checkout.session.completed")
            shot(page, "02-dashboard")

            # Rotate the CLI's key with no grace: the old key stops at once, the new one works.
            assert api_status(server, old_key, "bob") == 200
            page.click("nav.tabs >> text=API keys")
            row = page.locator("tr", has_text="default")
            row.locator("select[name=grace]").select_option("now")
            row.get_by_role("button", name="Rotate").click()
            # "now" is destructive: a confirmation page first, and the old key still works meanwhile.
            expect(page.locator("h1")).to_have_text("Rotate key “default”?")
            assert api_status(server, old_key, "bob") == 200
            shot(page, "03-keys-confirm-rotate")
            page.get_by_role("button", name="Rotate now").click()
            new_key = page.locator("#new-key").input_value()
            assert new_key.startswith("pp_live_") and new_key != old_key
            expect(page.locator(".js-copy")).to_be_visible()  # the copy button appears with JavaScript
            shot(page, "03-keys-new-key")
            assert api_status(server, old_key, "bob") == 401
            assert api_status(server, new_key, "bob") == 200
            page.goto(f"{base}/console/p/{project_id}/keys")
            assert new_key not in page.content()

            # Customers: search by prefix, open one.
            page.click("nav.tabs >> text=Customers")
            page.fill("input[name=q]", "bo")
            page.click("button:has-text('Search')")
            expect(page.locator("tbody tr")).to_have_count(1)
            expect(page.locator("tbody")).to_contain_text("bob@example.test")
            shot(page, "04-customers")
            page.click("tbody >> text=bob")
            expect(page.locator("h1")).to_have_text("bob")
            expect(page.locator("text=checkout.session.completed").first).to_be_visible()
            shot(page, "05-customer")

            # CSV download holds every customer the server knows.
            page.click("nav.tabs >> text=Customers")
            with page.expect_download() as info:
                page.click("text=Download CSV")
            download = info.value
            assert download.suggested_filename.startswith(f"customers-{project_id}-")
            raw = Path(download.path()).read_bytes()
            assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM, so Excel shows non-ASCII names right
            rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
            assert sorted(r["external_user_id"] for r in rows) == ["bob", "carol"]
            assert {r["status"] for r in rows} == {"active"}

            # The failed webhook: filter, look at the payload, re-apply it now that Stripe is back.
            page.click("nav.tabs >> text=Webhook events")
            page.select_option("select[name=outcome]", "failed")
            page.click("button:has-text('Filter')")
            expect(page.locator("tbody tr")).to_have_count(1)
            shot(page, "06-events-failed")
            page.click("tbody >> text=checkout.session.completed")
            expect(page.locator("pre")).to_contain_text('"client_reference_id": "alice"')
            shot(page, "07-event-failed")
            page.click("button:has-text('Re-apply event')")
            expect(page.get_by_role("status")).to_contain_text("applied again")
            expect(page.locator(".facts .badge").first).to_have_text("processed")
            assert api_status(server, new_key, "alice") == 200

            page.click("nav.tabs >> text=Settings")
            page.click("button:has-text('Check connection')")
            expect(page.locator("p.flash")).to_contain_text(f"Connected to Stripe account {fake.account['id']}")
            expect(page.locator("#webhook-url")).to_have_value(f"{base}/api/webhook/{project_id}")
            shot(page, "08-settings")
            page.click("nav.tabs >> text=Audit log")
            expect(page.locator("tbody")).to_contain_text("api_key.rotated")
            shot(page, "09-audit")

            # Sign out: the console is closed again.
            page.click("button:has-text('Sign out')")
            expect(page.get_by_role("status")).to_have_text("You are signed out.")
            page.goto(f"{base}/console/p/{project_id}/")
            expect(page).to_have_url(f"{base}/console/login?next=%2Fconsole%2Fp%2F{project_id}%2F")
            # No CSP violation or script error on any page (expected 401/404 answers are not errors here).
            assert not [e for e in errors if "Failed to load resource" not in e], errors
        finally:
            browser.close()


def test_pages_work_without_javascript(stack):
    server, created, _ = stack
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(java_script_enabled=False).new_page()
            page.goto(f"{server.base_url}/console/login")
            page.fill("input[name=email]", "owner@acme.test")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.click("nav.tabs >> text=API keys")
            page.fill("input[name=label]", "no-js")
            page.click("button:has-text('Create key')")
            assert page.locator("#new-key").input_value().startswith("pp_live_")
            expect(page.locator(".js-copy")).to_be_hidden()  # nothing broken, just no copy button
            # Revoking asks first, with a plain form: no JavaScript dialog involved.
            page.goto(f"{server.base_url}/console/p/{created['project_id']}/keys")
            page.locator("tr", has_text="no-js").get_by_role("button", name="Revoke").click()
            expect(page.locator("h1")).to_have_text("Revoke key “no-js”?")
            page.get_by_role("button", name="Revoke key now").click()
            expect(page.get_by_role("status")).to_contain_text("Key “no-js”")
            expect(page.locator("tr", has_text="no-js")).to_contain_text("revoked")
            page.locator("summary", has_text="Acme Browser").click()  # the switcher is plain <details>
            expect(page.locator(".switcher a")).to_have_count(1)
        finally:
            browser.close()


PAGES = [
    "/console/login",
    "",
    "keys",
    "keys/{key}/revoke",
    "customers",
    "customers/bob",
    "events",
    "events/{event}",
    "settings",
    "audit",
    "/console/account",
    "/console/",
    "/status",
    "/console/no-such-page",
    "webhooks",
]
VIEWPORTS = {"390": {"width": 390, "height": 844}, "1366": {"width": 1366, "height": 860}}


def test_every_page_fits_a_phone_and_a_laptop_without_sideways_scrolling(stack):
    """Each console page at 390 px and 1366 px: no horizontal scroll; screenshots land in tests/artifacts/."""
    server, created, fake = stack
    project_id, base = created["project_id"], server.base_url
    # Long values are what break narrow layouts: a long external id and email, and a second project.
    long_id = "customer-with-a-rather-long-external-id-0123456789"
    session, _ = stripe_events.new_subscription(
        fake, long_id, project_id=project_id, email="someone.with.a.long.address@subdomain.example.test"
    )
    assert send_event(server, project_id, stripe_events.event("checkout.session.completed", session))[0] == 200
    cli(server.env, "create-project", "Second project with a long name", "--admin-email", "owner@acme.test")
    # An outgoing webhook endpoint with a long URL and a delivery (it fails: no such host), for the webhooks page.
    hook = json.dumps({"url": "https://hooks.a-rather-long-subdomain.example.test/paymentpulse/webhooks/production"})
    status, _, body = server.request(
        "POST", "/api/webhook-endpoints", hook, {"X-API-Key": created["api_key"], "Content-Type": "application/json"}
    )
    assert status == 201, body
    endpoint_id = json.loads(body)["id"]
    assert (
        server.request("POST", f"/api/webhook-endpoints/{endpoint_id}/test", "", {"X-API-Key": created["api_key"]})[0]
        == 202
    )
    failures = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for size, viewport in VIEWPORTS.items():
                page = browser.new_context(viewport=viewport).new_page()
                page.goto(f"{base}/console/login")
                shot(page, f"{size}-login")
                page.fill("input[name=email]", "owner@acme.test")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.goto(f"{base}/console/p/{project_id}/keys")
                key = page.locator("form[action$='/revoke']").first.get_attribute("action").split("/")[-2]
                page.goto(f"{base}/console/p/{project_id}/events")
                event = page.locator("tbody a").first.get_attribute("href").rsplit("/", 1)[-1]
                for path in PAGES[1:]:
                    target = path if path.startswith("/") else f"/console/p/{project_id}/{path}"
                    target = target.format(key=key, event=event)
                    if path.endswith("/revoke"):  # the confirmation page answers the Revoke button's POST
                        page.goto(f"{base}/console/p/{project_id}/keys")
                        page.locator("form[action$='/revoke'] button").first.click()
                        expect(page.locator("h1")).to_contain_text("Revoke key")
                    else:
                        page.goto(base + target)
                    name = path.strip("/").replace("/", "-").replace("{", "").replace("}", "") or "dashboard"
                    shot(page, f"{size}-{name}")
                    scroll = page.evaluate("document.documentElement.scrollWidth")
                    if scroll > viewport["width"]:
                        failures.append(f"{target} at {size} px: scrollWidth {scroll}")
                # Phones get the narrow charts, whose labels stay at a readable size.
                page.goto(f"{base}/console/p/{project_id}/")
                chart = "svg.chart-narrow" if size == "390" else "svg.chart-wide"
                # Two charts per variant: subscriptions started and MRR (the seeded prices give MRR).
                expect(page.locator(chart)).to_have_count(2)
                for i in range(2):
                    expect(page.locator(chart).nth(i)).to_be_visible()
                label_px = page.evaluate(f"""() => Math.min(...[...document.querySelectorAll('{chart} text')]
                                            .map(t => t.getBoundingClientRect().height))""")
                assert label_px >= 9, (size, label_px)
                page.context.close()
        finally:
            browser.close()
    assert not failures, failures
