"""Customer pages open whatever the tenant's id is (security review L12): `.`, `..`, `/`, `\\`, `?`, `%`."""

import html
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from pulse import db
from pulse.models import Customer
from tests.console_support import Console, text
from tests.live_server import LiveServer

ODD_IDS = [".", "..", "a/b", "a/../b", "../x", "back\\slash", "q?x=1#frag", "100%", "%2e%2e", " sp ace "]
CHROMIUM = "/usr/bin/chromium"


def dot_segment(segment):
    """A segment a browser removes or resolves (WHATWG URL: `.`/`..`, percent-encoded or not)."""
    return segment.lower() in (".", "%2e", "..", ".%2e", "%2e.", "%2e%2e")


def seed_odd(project):
    with db.block():
        for i, external_id in enumerate(ODD_IDS):
            Customer.create(project=project, external_user_id=external_id, email=f"odd{i}@x.test")


def customer_links(page):
    return [html.unescape(href) for href in re.findall(r'href="([^"]*/customers/[^"]*)"', page)]


@pytest.mark.gen_test(timeout=60)
async def test_every_customer_link_survives_a_browser_and_opens(http_client, base_url, project):
    seed_odd(project.project)
    console = Console(http_client, base_url)
    assert (await console.login(project.admin.email)).code == 302
    listing = text(await console.get(f"/console/p/{project.project.public_id}/customers"))
    links = customer_links(listing)
    assert len(links) == len(ODD_IDS)
    for link in links:
        path = urlsplit(link).path
        assert not any(dot_segment(s) for s in path.split("/")), link
        assert "\\" not in link and "#" not in link, link
        response = await console.get(link)
        assert response.code == 200, (link, response.code)
        shown = re.search(r"<h1[^>]*>(.*?)</h1>", text(response), re.S)
        assert shown, link
    opened = set()
    for link in links:
        body = html.unescape(text(await console.get(link)))
        opened |= {external_id for external_id in ODD_IDS if f"odd{ODD_IDS.index(external_id)}@x.test" in body}
    assert opened == set(ODD_IDS)
    # An empty or unknown id in the query form is a 404 page, not an error.
    for missing in ("", "?id=", "?id=nobody"):
        assert (await console.get(f"/console/p/{project.project.public_id}/customers/{missing}")).code == 404


def test_in_chromium_each_customer_link_opens_its_page(db_url):
    """The review's case as a browser sees it: Chromium normalises links before requesting them."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("PULSE_TEST_REQUIRE_ALL") == "1":
            pytest.fail(f"Chromium is required (PULSE_TEST_REQUIRE_ALL=1) but {CHROMIUM} is missing")
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    server = LiveServer(db_url).start()
    try:
        created = server.create_project("Odd", admin_email="odd@x.test", admin_password="odd-admin-password")
        db.bind(db_url)
        with db.block():
            from pulse.models import Project

            seed_odd(Project.get(Project.public_id == created["project_id"]))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(server.base_url + "/console/login")
            page.fill("input[name=email]", "odd@x.test")
            page.fill("input[name=password]", "odd-admin-password")
            page.click("button[type=submit]")
            listing = f"{server.base_url}/console/p/{created['project_id']}/customers"
            for i, external_id in enumerate(ODD_IDS):
                page.goto(listing)
                page.get_by_role("link", name=external_id.strip(), exact=True).first.click()
                page.wait_for_load_state()
                assert f"odd{i}@x.test" in page.content(), (external_id, unquote(page.url))
            browser.close()
    finally:
        server.stop()
        db.database.close()
