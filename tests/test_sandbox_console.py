"""Console pages of a sandbox project: the Sandbox badge on every page, and its clock page (SPEC 8)."""

import pytest

from tests.console_support import Console, seed, text
from tests.test_console_pages import PAGES


@pytest.fixture
def console(http_client, base_url):
    return Console(http_client, base_url)


@pytest.mark.gen_test(timeout=60)
async def test_every_page_of_a_sandbox_project_says_sandbox_and_no_live_page_does(console, make_project):
    sandbox = make_project(name="Demo", admin_email="demo@example.test", sandbox=True)
    live = make_project(name="Live", admin_email="demo@example.test")
    _, failed = seed(sandbox.project)
    values = {"failed": failed.id, "key": sandbox.api_key.key_id}
    await console.login("demo@example.test")
    for suffix in PAGES + ["sandbox"]:
        response = await console.get(f"/console/p/{sandbox.project.public_id}/" + suffix.format(**values))
        assert response.code == 200, suffix
        if response.headers["Content-Type"].startswith("text/html"):
            assert 'class="badge badge-sandbox"' in text(response), suffix
    for suffix in ("", "keys", "settings"):
        response = await console.get(f"/console/p/{live.project.public_id}/{suffix}")
        assert response.code == 200 and "badge-sandbox" not in text(response)
    assert (await console.get(f"/console/p/{live.project.public_id}/sandbox")).code == 404
    page = text(await console.get(f"/console/p/{sandbox.project.public_id}/sandbox"))
    assert "Advance the clock" in page and "No subscriptions yet" in page
    assert sandbox.api_key.api_key.startswith("pp_test_") and live.api_key.api_key.startswith("pp_live_")


@pytest.mark.gen_test(timeout=60)
async def test_a_sandbox_projects_stripe_settings_cannot_be_replaced(console, make_project):
    sandbox = make_project(name="Demo", admin_email="demo@example.test", sandbox=True)
    await console.login("demo@example.test")
    page = text(await console.get(f"/console/p/{sandbox.project.public_id}/settings"))
    assert "built-in Stripe simulator" in page and 'name="stripe_secret_key"' not in page
    response = await console.post(
        f"/console/p/{sandbox.project.public_id}/settings/stripe",
        {"stripe_secret_key": "sk_live_" + "1" * 24, "confirm": "replace"},
    )
    assert response.code == 400 and "its keys cannot be changed" in text(response)


@pytest.mark.gen_test(timeout=60)
async def test_the_clock_form_takes_ascii_decimal_days_only(console, make_project):
    """QA #2: float() also reads "٣", "1_0" and "３" as numbers; the form takes 0-9 and one dot."""
    sandbox = make_project(name="Demo", admin_email="demo@example.test", sandbox=True)
    await console.login("demo@example.test")
    path = f"/console/p/{sandbox.project.public_id}/sandbox"
    for days in ("\u0663", "1_0", "\uff13", "\u00b2", "inf", "nan", "-1", "", "1e2", "0", "3661"):
        response = await console.post(path, {"action": "advance", "days": days})
        assert response.code == 400 and "Advance by more than 0" in text(response), ascii(days)
    for days in ("3", "2.5", " 7 "):
        assert (await console.post(path, {"action": "advance", "days": days})).code == 303, days


@pytest.mark.gen_test(timeout=60)
async def test_the_clock_page_lists_the_simulators_subscriptions_with_their_cards(console, make_project):
    from sandbox import store
    from tests.test_sandbox_simulator import paid_subscription

    sandbox = make_project(name="Demo", admin_email="demo@example.test", sandbox=True)
    sub_id, _ = store.run(sandbox.project, lambda sim: paid_subscription(sim, card="4000000000000341"))
    await console.login("demo@example.test")
    page = text(await console.get(f"/console/p/{sandbox.project.public_id}/sandbox"))
    assert sub_id in page and "price_pro_monthly" in page and '<option value="fails" selected>' in page
