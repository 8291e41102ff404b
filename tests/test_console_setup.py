"""The dashboard's setup health, confirmed secret replacement, and one timestamp format everywhere."""

import json
import re
from datetime import timedelta

import pytest

from console.base import relative, timestamp
from pulse import db, projects, setup_health
from pulse.db import utcnow
from pulse.models import AuditLog, Project, WebhookEvent
from tests.console_support import Console, text
from tests.stripe_events import body_of_event, event, sign

WHSEC = "whsec_health_" + "c" * 24


@pytest.fixture
def console(http_client, base_url):
    return Console(http_client, base_url)


def codes(project, **defaults):
    with db.block():
        return [p.code for p in setup_health.problems(Project.get_by_id(project.id), **defaults)]


def test_setup_health_names_each_problem_until_it_is_fixed(app, make_project, box):
    project = make_project(name="Fresh").project
    assert codes(project) == ["stripe_key_missing", "webhook_secret_missing", "no_webhook_yet"]
    assert codes(project, default_secret_key=True, default_webhook_secret=True) == ["no_webhook_yet"]
    with db.block():
        projects.set_stripe(project, box, secret_key="sk_test_" + "h" * 24, webhook_secret=WHSEC)
        WebhookEvent.create(project=project, outcome="invalid_signature", error="no matching v1 signature")
        WebhookEvent.create(project=project, outcome="invalid_signature", error="no matching v1 signature")
    with db.block():
        found = setup_health.problems(Project.get_by_id(project.id))
    assert [p.code for p in found] == ["invalid_signatures", "no_webhook_yet"] and found[0].count == 2
    with db.block():  # a correctly signed delivery: the secret is right now
        WebhookEvent.create(project=project, stripe_event_id="evt_good", type="product.created", outcome="ignored")
    assert codes(project) == []
    with db.block():
        WebhookEvent.create(
            project=project, stripe_event_id="evt_old", outcome="failed", received_at=utcnow() - timedelta(days=8)
        )
        WebhookEvent.create(project=project, outcome="invalid_signature", error="timestamp outside the tolerance")
    assert codes(project) == ["invalid_signatures"]  # the 8-day-old failure is not "recent"
    with db.block():
        WebhookEvent.create(project=project, stripe_event_id="evt_new", outcome="failed", error="Stripe timed out")
        projects.audit("settings.connection_checked", project=project, ok=False)
    # evt_new was signed correctly (it failed later, applying): the bad signatures before it no longer count.
    assert codes(project) == ["failed_events", "connection_check_failed"]
    with db.block():  # a new secret key makes the old check's verdict stale
        projects.set_stripe(project, box, secret_key="sk_test_" + "j" * 24)
    assert "connection_check_failed" not in codes(project)
    with db.block():
        projects.set_stripe(project, box, webhook_secret=WHSEC)  # only the signing secret: the check still counts
        projects.audit("settings.connection_checked", project=project, ok=False)
        projects.set_stripe(project, box, webhook_secret=WHSEC)
    assert "connection_check_failed" in codes(project)
    with db.block():
        projects.audit("settings.connection_checked", project=project, ok=True)
    assert "connection_check_failed" not in codes(project)


@pytest.mark.gen_test(timeout=60)
async def test_dashboard_flags_a_wrong_signing_secret_until_a_good_delivery(
    console, http_client, base_url, make_project
):
    new = make_project(name="Signed", stripe_webhook_secret=WHSEC, stripe_secret_key="sk_test_" + "k" * 24)
    dashboard = f"/console/p/{new.project.public_id}/"
    await console.login(new.admin.email)
    page = text(await console.get(dashboard))
    assert "No webhook received yet" in page and f"/api/webhook/{new.project.public_id}" in page
    assert "No Stripe secret key" not in page and "No webhook signing secret" not in page

    async def deliver(secret):
        body = body_of_event(event("product.created", {"id": "prod_health", "object": "product"}))
        return await http_client.fetch(
            f"{base_url}/api/webhook/{new.project.public_id}",
            method="POST",
            body=body,
            headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)},
            raise_error=False,
        )

    assert (await deliver("whsec_the_wrong_one_" + "0" * 20)).code == 400
    page = text(await console.get(dashboard))
    health = page[page.index("Setup health") : page.index('class="stats"')]
    assert "1 webhook delivery with a bad signature" in health and "wrong signing secret" in health
    assert "outcome=invalid_signature" in health
    recent = page[page.index("Recent failures") :]
    assert "invalid signature" in recent and "No failed" not in recent  # no longer hidden from the dashboard
    assert (await deliver(WHSEC)).code == 200
    page = text(await console.get(dashboard))
    assert "Stripe credentials are set and webhooks are arriving" in page and "bad signature</strong>" not in page


@pytest.mark.gen_test(timeout=60)
async def test_replacing_a_stored_secret_needs_the_typed_word(console, make_project, box):
    old_key, new_key = "sk_test_" + "o" * 24, "sk_test_" + "n" * 24
    new = make_project(name="Keyed", stripe_secret_key=old_key)
    path = f"/console/p/{new.project.public_id}/settings"
    await console.login(new.admin.email)
    assert 'name="confirm"' in text(await console.get(path))
    response = await console.post(path + "/stripe", {"stripe_secret_key": new_key})
    assert response.code == 400 and "replaces the current secret key" in text(response)
    assert new_key not in text(response)  # the typed secret is never echoed back
    response = await console.post(path + "/stripe", {"stripe_secret_key": new_key, "confirm": "nope"})
    assert response.code == 400
    with db.block():
        assert box.decrypt(Project.get_by_id(new.project.id).stripe_secret_key) == old_key
    # Setting a secret that was never set replaces nothing: no confirmation.
    assert (await console.post(path + "/stripe", {"stripe_webhook_secret": WHSEC})).code == 303
    response = await console.post(path + "/stripe", {"stripe_secret_key": new_key, "confirm": " Replace "})
    assert response.code == 303
    with db.block():
        assert box.decrypt(Project.get_by_id(new.project.id).stripe_secret_key) == new_key
        logged = [json.loads(a.detail) for a in AuditLog.select().where(AuditLog.action == "settings.stripe_updated")]
    assert len(logged) == 2


def test_one_timestamp_format_with_zone_and_relative_time():
    now = utcnow().replace(microsecond=0)
    shown = str(timestamp(now - timedelta(minutes=3), seconds=True))
    assert re.fullmatch(
        r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ" title="3 minutes ago">'
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>",
        shown,
    ), shown
    assert str(timestamp("2026-11-30T14:07:43Z")).endswith(">2026-11-30 14:07 UTC</time>")
    assert "—" in str(timestamp(None))
    assert relative(now + timedelta(days=2, hours=1), now=now) == "in 2 days"
    assert relative(now - timedelta(seconds=10), now=now) == "just now"
    assert relative(now - timedelta(hours=1), now=now) == "1 hour ago"


@pytest.mark.gen_test(timeout=60)
async def test_every_page_renders_times_the_one_way(console, make_project):
    from tests.console_support import seed

    new = make_project(name="Times")
    seed(new.project)
    await console.login(new.admin.email)
    base = f"/console/p/{new.project.public_id}/"
    for suffix in ("", "keys", "customers", "customers/user-000", "events", "audit"):
        body = text(await console.get(base + suffix))
        times = re.findall(r"<time[^>]*>[^<]*</time>", body)
        assert times, suffix
        for tag in times:
            assert re.fullmatch(
                r'<time datetime="[0-9T:-]+Z" title="[a-z0-9 ]+">'
                r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)? UTC</time>",
                tag,
            ), (suffix, tag)
    events = text(await console.get(base + "events"))
    assert re.search(r">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>", events)  # the webhook log shows seconds
