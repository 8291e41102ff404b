"""Hostile input on every surface gets a 4xx, never a 500, and ids match exactly (security review M4, L2).

Each reproduction of the review is replayed against the real server (over HTTP), then a property
test per input surface (API bodies, query strings, console forms and cursors, webhook bodies,
static paths) asserts "never 5xx".
"""

import json
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pulse.config import RateLimit
from tests.billing_support import add_customer, add_subscription, checkout_body
from tests.console_support import Console, text
from tests.stripe_events import sign

WHSEC = "whsec_hardening_" + "h" * 24
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CONTROL = ["\x00", "\x01", "\x08", "\x09", "\x0a", "\x0b", "\x0d", "\x1f", "\x7f", "\x85", "\x9f"]


@pytest.fixture
def config_overrides(fake_stripe):
    return fake_stripe.config_overrides(
        stripe_max_retries=0, rate_limit_authenticated=RateLimit(100000, 60), rate_limit_anonymous=RateLimit(100000, 60)
    )


@pytest.fixture
def hooked(make_project):
    return make_project(name="Hardened", stripe_webhook_secret=WHSEC)


def body_of(response):
    return json.loads(response.body.decode("utf-8"))


def run(io_loop, coro_fn):
    return io_loop.run_sync(coro_fn, timeout=60)


def assert_4xx(response, code=None):
    assert 400 <= response.code < 500, (response.code, response.body[:300])
    if response.headers.get("Content-Type", "").startswith("application/json"):
        error = body_of(response)["error"]
        assert error["status"] == response.code and (code is None or error["code"] == code), error
    assert b"Traceback" not in response.body


async def signed_in(http_client, base_url, project):
    console = Console(http_client, base_url)
    assert (await console.login(project.admin.email)).code == 302
    return console


def deliver(http_client, base_url, hooked, body):
    body = body if isinstance(body, bytes) else body.encode("utf-8")
    return http_client.fetch(
        base_url + f"/api/webhook/{hooked.project.public_id}",
        method="POST",
        body=body,
        raise_error=False,
        headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, WHSEC)},
    )


# ---------------------------------------------------------------- M4: exact ids


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("char", CONTROL, ids=[f"U+{ord(c):04X}" for c in CONTROL])
async def test_control_characters_in_ids_are_400_on_every_route_that_takes_one(
    api, project, http_client, base_url, char
):
    victim = add_customer(project.project, "john smith", email="john@victim.test")
    add_subscription(victim)
    assert (await api("GET", "/api/subscription?external_user_id=john%20smith")).code == 200
    spoof = "john" + char + "smith"

    read = await api("GET", "/api/subscription?" + urlencode({"external_user_id": spoof}))
    assert_4xx(read, "invalid_field")
    assert body_of(read)["error"]["field"] == "external_user_id" and b"victim" not in read.body
    checkout = await api("POST", "/api/checkout", checkout_body(external_user_id=spoof))
    assert_4xx(checkout, "invalid_field")
    assert body_of(checkout)["error"]["field"] == "external_user_id"
    portal = await api("POST", "/api/portal", {"external_user_id": spoof, "return_url": "https://app.test/"})
    assert_4xx(portal, "invalid_field")
    # The console's customer page takes the id from the path, exactly: another id, another (absent) customer.
    console = await signed_in(http_client, base_url, project)
    page = await console.get(f"/console/p/{project.project.public_id}/customers/{quote(spoof, safe='')}")
    assert page.code == 404 and "john@victim.test" not in text(page)
    assert (await console.get(f"/console/p/{project.project.public_id}/customers/john%20smith")).code == 200


# ---------------------------------------------------------------- L2: each reproduction


@pytest.mark.gen_test(timeout=60)
async def test_json_nested_fifty_thousand_deep_is_400(api):
    deep = "[" * 50000 + "]" * 50000
    assert_4xx(
        await api("POST", "/api/checkout", body=deep, headers={"Content-Type": "application/json"}), "invalid_json"
    )
    deep_object = '{"a":' * 50000 + "1" + "}" * 50000
    assert_4xx(
        await api(
            "POST",
            "/api/checkout",
            body=deep_object,
            headers={"Content-Type": "application/json", "Idempotency-Key": "deep-1"},
        ),
        "invalid_json",
    )


@pytest.mark.gen_test(timeout=60)
async def test_signed_webhooks_nested_deep_or_with_lone_surrogates_are_400(http_client, base_url, hooked):
    deep = '{"id": "evt_deep", "type": "x", "data": {"object": ' + '{"a":' * 100000 + "1" + "}" * 100000 + "}}"
    assert_4xx(await deliver(http_client, base_url, hooked, deep), "invalid_payload")
    lone = '{"id": "evt_\\udc00", "type": "customer.updated", "data": {"object": {"id": "cus_1"}}}'
    assert_4xx(await deliver(http_client, base_url, hooked, lone), "invalid_payload")
    paired = '{"id": "evt_\\ud83d\\ude00", "type": "some.unknown", "data": {"object": {"id": "x"}}}'
    assert (await deliver(http_client, base_url, hooked, paired)).code == 200  # a real character is fine


@pytest.mark.gen_test(timeout=60)
async def test_huge_console_cursors_and_event_ids_are_not_500(http_client, base_url, project):
    console = await signed_in(http_client, base_url, project)
    base = f"/console/p/{project.project.public_id}"
    for path in ("/customers?after=", "/events?before=", "/audit?before="):
        for value in (2**63, 2**70, -(2**70), "9" * 5000):
            response = await console.get(base + path + str(value))
            assert response.code == 200, (path, response.code)
    assert (await console.get(base + f"/events/{2**70}")).code == 404
    assert (await console.get(base + f"/events/{2**63 - 1}")).code == 404


@pytest.mark.gen_test(timeout=60)
async def test_sign_in_with_a_del_in_next_lands_on_the_console(http_client, base_url, project):
    console = Console(http_client, base_url)
    response = await console.login(project.admin.email, next_path="/%7F\x7f/x")
    assert response.code == 302 and response.headers["Location"] == "/console/"


@pytest.mark.gen_test(timeout=60)
async def test_nul_in_a_static_path_is_404(http_client, base_url):
    for path in ("/static/console.css%00.js", "/static/%00", "/static/console.css%00?x=1"):
        response = await http_client.fetch(base_url + path, raise_error=False)
        assert response.code == 404, path


# ---------------------------------------------------------------- QA 2026-11-30: numbers, JSON keys, bytes

# int() and str.isdigit() take all of these; a client number is 1-18 ASCII digits and nothing else.
NOT_ASCII_NUMBERS = [
    "\u00b2",
    "\u0663",
    "\uff13",
    "\u2463",
    "\U0001d7d1",
    " 3",
    "3 ",
    "+3",
    "1_0",
    "0x3",
    "3.0",
    "-1",
    "",
]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS, ids=[ascii(v) for v in NOT_ASCII_NUMBERS])
async def test_invoice_limit_takes_ascii_digits_only(api, value):
    response = await api("GET", "/api/invoices?" + urlencode({"external_user_id": "42", "limit": value}))
    assert_4xx(response, "invalid_field")
    assert body_of(response)["error"]["field"] == "limit"
    for bad in ("0", "101", "9" * 30, "9" * 5000):
        response = await api("GET", f"/api/invoices?external_user_id=42&limit={bad}")
        assert_4xx(response, "invalid_field")
        assert body_of(response)["error"]["field"] == "limit"


@pytest.mark.gen_test(timeout=60)
async def test_console_resend_takes_an_ascii_delivery_id_only(http_client, base_url, project):
    console = await signed_in(http_client, base_url, project)
    path = f"/console/p/{project.project.public_id}/webhooks/resend"
    for value in NOT_ASCII_NUMBERS + ["9" * 5000]:
        response = await console.post(path, {"delivery": value})
        assert response.code == 404, (ascii(value), response.code)


DUPLICATES = [
    ("POST", "/api/subscription/cancel", '{"external_user_id": "nobody", "external_user_id": "42"}'),
    ("POST", "/api/subscription/cancel", '{"external_user_id": "42", "external_\\u0075ser_id": "42"}'),
    ("POST", "/api/checkout", '{"external_user_id": "42", "extra": {"a": 1, "b": {"c": 1, "c": 1}}}'),
    ("POST", "/api/portal", '{"external_user_id": "42", "x": [1, {"k": 1, "k": 2}]}'),
    ("POST", "/api/subscription/change", '{"quantity": 1, "quantity": 2, "external_user_id": "42"}'),
    ("PUT", "/api/plans/pro", '{"stripe_price_ids": ["price_a"], "stripe_price_ids": ["price_b"]}'),
    ("POST", "/api/webhook-endpoints", '{"url": "https://a.test/h", "url": "https://b.test/h"}'),
]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    "method, path, raw", DUPLICATES, ids=[f"{m} {p} {i}" for i, (m, p, _) in enumerate(DUPLICATES)]
)
async def test_duplicate_json_keys_are_400_at_any_depth(api, method, path, raw):
    """QA #9: "last one wins" lets a proxy or a log read another user than the one acted on."""
    for headers in ({}, {"Idempotency-Key": "dup-" + path}):
        response = await api(method, path, body=raw, headers={"Content-Type": "application/json", **headers})
        assert_4xx(response, "invalid_json")
        assert "duplicate key" in body_of(response)["error"]["message"]


@pytest.mark.gen_test(timeout=60)
async def test_a_duplicate_key_body_and_its_clean_twin_are_different_idempotent_requests(api):
    headers = {"Content-Type": "application/json", "Idempotency-Key": "twin"}
    dup = '{"external_user_id": "nobody", "external_user_id": "42"}'
    assert_4xx(await api("POST", "/api/subscription/cancel", body=dup, headers=headers), "invalid_json")
    clean = await api("POST", "/api/subscription/cancel", body='{"external_user_id": "42"}', headers=headers)
    assert_4xx(clean, "idempotency_conflict")  # not a replay of the 400: it is another request


@pytest.mark.gen_test(timeout=60)
async def test_signed_stripe_webhooks_are_parsed_as_stripe_sends_them(http_client, base_url, hooked):
    """The duplicate-key rule is the API's: a Stripe event is verified by its signature, not reshaped."""
    raw = '{"id": "evt_dup", "type": "some.unknown", "type": "some.unknown", "data": {"object": {"id": "x"}}}'
    response = await deliver(http_client, base_url, hooked, raw)
    assert response.code == 200, response.body


NOT_UTF8 = [
    ("GET", "/api/subscription?external_user_id=%ff", "external_user_id"),
    ("GET", "/api/invoices?external_user_id=%ff%fe", "external_user_id"),
    ("GET", "/api/invoices?external_user_id=42&limit=%b2", "limit"),
    ("GET", "/api/invoices?external_user_id=42&starting_after=in_%c3", "starting_after"),
    ("GET", "/api/entitlements/%ff?external_user_id=42", "feature"),
    ("GET", "/api/entitlements/api?external_user_id=%ed%a0%80", "external_user_id"),
    ("PUT", "/api/plans/%ff", "plan_slug"),
    ("DELETE", "/api/plans/pro%c0%af", "plan_slug"),
    ("GET", "/api/customers/export?format=%ff", "format"),
    ("GET", "/api/customers/export?bom=%80", "bom"),
]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("method, path, field", NOT_UTF8, ids=[p for _, p, _ in NOT_UTF8])
async def test_bytes_that_are_not_utf8_name_the_argument(api, method, path, field):
    """QA #10: the SPEC 3.1 envelope with `field`, and no Python bytes repr (Tornado's "Invalid unicode in …")."""
    body = '{"stripe_price_ids": ["price_q"]}' if method == "PUT" else ("{}" if method == "POST" else None)
    response = await api(method, path, body=body, headers={"Content-Type": "application/json"})
    assert_4xx(response, "invalid_field")
    error = body_of(response)["error"]
    assert error["field"] == field, error
    assert error["message"] == f"{field} must be UTF-8", error


# ---------------------------------------------------------------- "never 5xx", one property per surface

nested = st.builds(
    lambda depth, opener: (
        (opener * depth) + ("1" if opener == '{"a":' else "") + ({"[": "]", '{"a":': "}"}[opener] * depth)
    ),
    st.integers(min_value=1, max_value=120000),
    st.sampled_from(["[", '{"a":']),
)
hostile_text = st.text(max_size=60) | st.sampled_from(
    ["\x00", "\x7f", "\x85", "%00", "%ff", "a" * 3000, "../../etc/passwd", "\\u0000", "/\x7f"]
)


def test_api_bodies_never_5xx(io_loop, api):
    @PROPERTY
    @given(
        body=nested | hostile_text.map(json.dumps),
        path=st.sampled_from(["/api/checkout", "/api/portal"]),
        idempotent=st.booleans(),
    )
    @example(body="[" * 50000 + "]" * 50000, path="/api/checkout", idempotent=True)
    def check(body, path, idempotent):
        headers = {
            "Content-Type": "application/json",
            **({"Idempotency-Key": "k-" + str(len(body))} if idempotent else {}),
        }
        response = run(io_loop, lambda: api("POST", path, body=body, headers=headers))
        assert response.code < 500, (response.code, response.body[:200])

    check()


def test_query_strings_never_5xx(io_loop, api):
    @PROPERTY
    @given(
        raw=st.binary(max_size=80),
        name=st.sampled_from(["external_user_id", "format", "x"]),
        path=st.sampled_from(["/api/subscription", "/api/customers/export", "/api/health"]),
    )
    @example(raw=b"john\x01smith", name="external_user_id", path="/api/subscription")
    @example(raw=b"\xed\xb0\x80", name="external_user_id", path="/api/subscription")
    def check(raw, name, path):
        response = run(io_loop, lambda: api("GET", f"{path}?{name}={quote(raw, safe='')}"))
        assert response.code < 500, (response.code, response.body[:200])

    check()


def test_console_forms_and_cursors_never_5xx(io_loop, http_client, base_url, project):
    console = run(io_loop, lambda: signed_in(http_client, base_url, project))
    anonymous = Console(http_client, base_url)
    base = f"/console/p/{project.project.public_id}"
    cursor = st.one_of(st.integers(min_value=-(2**80), max_value=2**80).map(str), hostile_text)

    @PROPERTY
    @given(
        page=st.sampled_from(
            ["/customers?after=", "/events?before=", "/audit?before=", "/customers?q=", "/events?type=", "/events/"]
        ),
        value=cursor,
        form=st.fixed_dictionaries({"email": hostile_text, "password": hostile_text, "next": hostile_text}),
    )
    @example(page="/events/", value=str(2**70), form={"email": "", "password": "", "next": "/\x7f"})
    def check(page, value, form):
        response = run(io_loop, lambda: console.get(base + page + quote(value, safe="")))
        assert response.code < 500, (page, value, response.code)
        response = run(io_loop, lambda: anonymous.post("/console/login", form))
        assert response.code < 500, (form, response.code)
        response = run(io_loop, lambda: anonymous.get("/console/login?" + urlencode({"next": form["next"]})))
        assert response.code < 500, (form, response.code)

    check()


def test_webhook_bodies_never_5xx(io_loop, http_client, base_url, hooked):
    event_ids = hostile_text | st.sampled_from(["\\udc00", "\\ud800x", "\\udfff\\ud800"])

    @PROPERTY
    @given(event_id=event_ids, depth=st.integers(min_value=0, max_value=120000), raw=st.booleans())
    @example(event_id="\\udc00", depth=0, raw=True)
    @example(event_id="evt_1", depth=100000, raw=False)
    def check(event_id, depth, raw):
        # raw: the id spliced in as written (JSON escapes kept), else JSON-encoded as text.
        id_json = f'"{event_id}"' if raw and '"' not in event_id and "\\\\" not in event_id else json.dumps(event_id)
        body = (
            '{"id": '
            + id_json
            + ', "type": "some.unknown.type", "data": {"object": '
            + '{"a":' * depth
            + "1"
            + "}" * depth
            + "}}"
        )
        response = run(io_loop, lambda: deliver(http_client, base_url, hooked, body))
        assert response.code < 500, (event_id, depth, response.code, response.body[:200])

    check()


def test_static_paths_never_5xx(io_loop, http_client, base_url):
    @PROPERTY
    @given(path=hostile_text, encode=st.booleans())
    @example(path="console.css\x00.js", encode=True)
    def check(path, encode):
        target = quote(path, safe="/") if encode else quote(path, safe="/%")
        response = run(io_loop, lambda: http_client.fetch(base_url + "/static/" + target, raise_error=False))
        assert response.code < 500, (path, response.code)

    check()
