"""What each console page does: API keys, customers, events, the dashboard and settings."""

import re
from datetime import timedelta

import pytest

from pulse import apikeys, db
from pulse.db import utcnow
from pulse.models import ApiKey, AuditLog, Customer, Project, WebhookEvent
from tests.console_support import new_key_in, text, url


@pytest.mark.gen_test(timeout=60)
async def test_keys_create_rotate_revoke_with_audit(console, project, seeded):
    await console.login(project.admin.email)
    response = await console.post(url(project, "keys", seeded), {"label": "staging"})
    assert response.code == 201
    raw = new_key_in(text(response))
    assert raw and "shown <strong>only once</strong>" in text(response)
    listing = text(await console.get(url(project, "keys", seeded)))
    assert raw not in listing and "staging" in listing and raw[:14] in listing  # the prefix only
    with db.block():
        created = ApiKey.get(ApiKey.label == "staging")
        assert apikeys.authenticate(raw) is not None

    old = project.api_key.api_key
    response = await console.post(url(project, f"keys/{project.api_key.key_id}/rotate", seeded), {"grace": "1h"})
    assert response.code == 201 and "after 1 hour" in text(response)
    replacement = new_key_in(text(response))
    with db.block():
        assert apikeys.authenticate(old) is not None  # still inside the grace period
        assert apikeys.authenticate(replacement) is not None
        revoked_at = ApiKey.get(ApiKey.public_id == project.api_key.key_id).revoked_at
        assert timedelta(minutes=59) < revoked_at - utcnow() <= timedelta(hours=1)

    # Rotating with no grace first asks, in a plain form; only the confirmed POST acts.
    confirm = await console.post(url(project, f"keys/{created.public_id}/rotate", seeded), {"grace": "now"})
    assert confirm.code == 200 and "Rotate key “staging”?" in text(confirm) and new_key_in(text(confirm)) is None
    assert 'name="confirmed" value="yes"' in text(confirm) and 'name="grace" value="now"' in text(confirm)
    with db.block():
        assert apikeys.authenticate(raw) is not None
    response = await console.post(
        url(project, f"keys/{created.public_id}/rotate", seeded), {"grace": "now", "confirmed": "yes"}
    )
    assert response.code == 201
    with db.block():
        assert apikeys.authenticate(raw) is None

    assert (
        await console.post(
            url(project, f"keys/{created.public_id}/rotate", seeded), {"grace": "now", "confirmed": "yes"}
        )
    ).code == 409
    assert (
        await console.post(url(project, f"keys/{project.api_key.key_id}/rotate", seeded), {"grace": "forever"})
    ).code == 400
    revoke = url(project, f"keys/{project.api_key.key_id}/revoke", seeded)
    confirm = await console.post(revoke)
    assert confirm.code == 200 and "Revoke key “default”?" in text(confirm) and "cannot be undone" in text(confirm)
    with db.block():
        assert apikeys.authenticate(old) is not None  # asking changed nothing
    response = await console.post(revoke, {"confirmed": "yes"})
    assert response.code == 303
    with db.block():
        assert apikeys.authenticate(old) is None
    done = text(await console.get(response.headers["Location"]))
    assert f"Key “default” ({project.api_key.prefix}…) was revoked" in done  # the notice names the key
    with db.block():
        actions = [
            a.action
            for a in AuditLog.select().where(AuditLog.project == project.project, AuditLog.user == project.admin)
        ]
    assert actions.count("api_key.created") == 1 and actions.count("api_key.rotated") == 2
    assert actions.count("api_key.revoked") == 1
    audit = text(await console.get(url(project, "audit", seeded)))
    assert "api_key.rotated" in audit and "console.signed_in" in audit and raw not in audit


@pytest.mark.gen_test(timeout=60)
async def test_key_label_is_required_and_escaped(console, project, seeded):
    await console.login(project.admin.email)
    assert (await console.post(url(project, "keys", seeded), {"label": " "})).code == 400
    response = await console.post(url(project, "keys", seeded), {"label": "<b>x</b>"})
    assert "<b>x</b>" not in text(response) and "&lt;b&gt;x&lt;/b&gt;" in text(response)


@pytest.mark.gen_test(timeout=60)
async def test_customer_search_filter_and_keyset_pages(console, project, seeded):
    with db.block():
        for i in range(60):
            Customer.create(project=project.project, external_user_id=f"bulk-{i:03d}", email=f"bulk{i}@example.com")
    await console.login(project.admin.email)
    page = text(await console.get(url(project, "customers?q=person1", seeded)))
    assert "user-001" in page and "user-000" not in page
    page = text(await console.get(url(project, "customers?q=USER-002", seeded)))  # ids are exact
    assert "user-002" not in page
    page = text(await console.get(url(project, "customers?q=PERSON2", seeded)))  # emails are not
    assert "user-002" in page and "user-001" not in page
    page = text(await console.get(url(project, "customers?q=user-002", seeded)))
    assert "user-002" in page and "person2@example.com" in page and "user-001" not in page
    page = text(await console.get(url(project, "customers?q=%25", seeded)))  # LIKE wildcards are literal
    assert "user-000" not in page
    page = text(await console.get(url(project, "customers?status=active", seeded)))
    assert "user-000" in page and "bulk-000" not in page
    assert "user-000" not in text(await console.get(url(project, "customers?status=past_due", seeded)))
    # Newest first, with the total, and Older / Newer links that walk back to the same first page.
    first = text(await console.get(url(project, "customers?q=bulk", seeded)))
    assert first.count("/customers/bulk-") == 50 and "bulk-059" in first and "bulk-009" not in first
    assert first.index("bulk-059") < first.index("bulk-058")
    assert re.search(r'class="count muted">60 matching<', first) and "showing 50 of 60" in first
    assert "Newer" not in first
    older = re.search(r'href="\?([^"]*before=\d+)" rel="next">Older', first).group(1).replace("&amp;", "&")
    second = text(await console.get(url(project, "customers?" + older, seeded)))
    assert second.count("/customers/bulk-") == 10 and "bulk-000" in second and "bulk-010" not in second
    assert "Older" not in second and "q=bulk" in older
    newer = re.search(r'href="\?([^"]*after=\d+)" rel="prev">‹ Newer', second).group(1).replace("&amp;", "&")
    back = text(await console.get(url(project, "customers?" + newer, seeded)))
    assert re.findall(r"/customers/(bulk-\d+)", back) == re.findall(r"/customers/(bulk-\d+)", first)
    everyone = text(await console.get(url(project, "customers", seeded)))
    assert re.search(r'class="count muted">63<', everyone)
    assert "No customers match this search" in text(await console.get(url(project, "customers?q=zzz", seeded)))


@pytest.mark.gen_test(timeout=60)
async def test_customer_page_shows_subscription_and_events(console, project, seeded):
    await console.login(project.admin.email)
    page = text(await console.get(url(project, "customers/user-000", seeded)))
    assert "sub_seed0" in page and "pro" in page and "has access" in page
    assert "evt_ok" in page and "evt_bad" in page


@pytest.mark.gen_test(timeout=60)
async def test_events_filter_payload_and_reapply(console, project, seeded):
    await console.login(project.admin.email)
    page = text(await console.get(url(project, "events?outcome=failed", seeded)))
    assert "evt_bad" in page and "evt_ok" not in page
    page = text(await console.get(url(project, "events?type=invoice.paid", seeded)))
    assert "evt_ok" in page and "evt_bad" not in page
    detail = text(await console.get(url(project, "events/{failed}", seeded)))
    assert "Re-apply event" in detail and "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert f'href="/console/p/{project.project.public_id}/customers/user-000"' in detail
    response = await console.post(url(project, "events/{failed}/reapply", seeded))
    assert response.code == 303
    with db.block():
        assert WebhookEvent.get_by_id(seeded["failed"]).outcome == "processed"
        assert Customer.get(Customer.stripe_customer_id == "cus_seed0").email == "renamed@example.com"
    detail = text(await console.get(response.headers["Location"]))
    assert "applied again" in detail and "Re-apply event" not in detail
    assert (await console.post(url(project, "events/{failed}/reapply", seeded))).code == 409


@pytest.mark.gen_test(timeout=60)
async def test_dashboard_counts_chart_and_failures(console, project, seeded):
    await console.login(project.admin.email)
    page = text(await console.get(url(project, "", seeded)))
    assert re.search(r'stat-label">active</span><span class="stat-value">3<', page)
    # Two server-rendered SVGs of the same 12 weeks: the wide one, and a narrow one with readable labels on phones.
    assert page.count("<rect ") == 24 and page.count("<svg") == 2 and "(3 in total)" in page
    assert "customer.updated" in page  # the recent failure
    health = page[page.index("Setup health") : page.index('class="stats"')]
    # The seeded project has no Stripe key or signing secret and a failed event.
    assert "No Stripe secret key" in health and f"set-stripe {project.project.public_id} --secret-key" in health
    assert "No webhook signing secret" in health and "1 event failed to apply" in health
    assert "outcome=failed" in health and "No webhook received yet" not in health  # evt_ok was signed


@pytest.mark.gen_test(timeout=60)
async def test_settings_are_write_only_and_audited(console, project, seeded, box):
    await console.login(project.admin.email)
    secret = "sk_test_" + "A1b2" * 8
    response = await console.post(
        url(project, "settings/stripe", seeded), {"stripe_secret_key": secret, "stripe_webhook_secret": ""}
    )
    assert response.code == 303
    page = text(await console.get(url(project, "settings", seeded)))
    assert secret not in page and "sk_test_…A1b2" in page
    assert re.search(rf'value="http://[a-z0-9.]+:\d+/api/webhook/{project.project.public_id}"', page)
    assert (await console.post(url(project, "settings/stripe", seeded), {"stripe_secret_key": "nonsense"})).code == 400
    assert (await console.post(url(project, "settings/stripe", seeded), {})).code == 400
    response = await console.post(url(project, "settings/policy", seeded), {"past_due_has_access": "no"})
    assert response.code == 303
    with db.block():
        assert Project.get_by_id(project.project.id).past_due_has_access is False
        assert box.decrypt(Project.get_by_id(project.project.id).stripe_secret_key) == secret
        logged = [a.detail for a in AuditLog.select().where(AuditLog.project == project.project)]
    assert not any(secret in detail for detail in logged)
    audit = text(await console.get(url(project, "audit", seeded)))
    assert "settings.stripe_updated" in audit and "settings.past_due_policy" in audit


@pytest.mark.gen_test(timeout=60)
async def test_check_connection_without_a_key_says_so(console, project, seeded):
    await console.login(project.admin.email)
    response = await console.post(url(project, "settings/check", seeded))
    assert response.code == 200 and "No Stripe secret key is set" in text(response)


@pytest.mark.gen_test(timeout=60)
async def test_customer_list_shows_the_subscription_the_api_reports(console, project, seeded):
    from pulse.models import Subscription

    with db.block():
        customer = Customer.get(Customer.external_user_id == "user-000")
        # A newer row that has ended must not hide the active subscription.
        Subscription.create(
            project=project.project,
            customer=customer,
            stripe_subscription_id="sub_old_cancelled",
            stripe_status="canceled",
            status="cancelled",
            started_at=utcnow(),
        )
    await console.login(project.admin.email)
    page = text(await console.get(url(project, "customers?q=user-000", seeded)))
    assert 'badge-ok">active<' in page and 'badge ">cancelled<' not in page


def test_weekly_starts_buckets_by_monday_weeks(project):
    from pulse import insights
    from pulse.models import Subscription

    now = utcnow()
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0)
    with db.block():
        customer = Customer.create(project=project.project, external_user_id="w")
        for n, started in enumerate(
            [
                now,
                monday,
                monday - timedelta(seconds=1),
                monday - timedelta(weeks=11),
                monday - timedelta(weeks=11, seconds=1),
            ]
        ):
            Subscription.create(
                project=project.project,
                customer=customer,
                stripe_subscription_id=f"sub_w{n}",
                stripe_status="active",
                status="active",
                started_at=started,
            )
        series = insights.weekly_starts(project.project, now=now)
    assert len(series) == 12 and series[-1][0] == monday.date()
    assert [count for _, count in series] == [1] + [0] * 9 + [1, 2]


@pytest.mark.gen_test(timeout=60)
async def test_external_ids_with_slashes_and_spaces_link_to_their_page(console, project, seeded):
    with db.block():
        Customer.create(project=project.project, external_user_id="team/42 a?b", email="t@example.com")
    await console.login(project.admin.email)
    listing = text(await console.get(url(project, "customers?q=team", seeded)))
    link = re.search(r'href="(/console/p/[^"]+/customers/team[^"]*)"', listing).group(1)
    assert link.endswith("/customers/team%2F42%20a%3Fb")
    page = await console.get(link)
    assert page.code == 200 and "t@example.com" in text(page)
