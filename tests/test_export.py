"""GET /api/customers/export (SPEC 3.2): both formats, current subscription, CSV injection, streaming."""

import csv
import io
import json
from datetime import datetime

import pytest
from tornado.simple_httpclient import HTTPStreamClosedError

from pulse import db, export
from pulse.models import Customer, Subscription
from tests.support import body_of

CSV_HEADER = (
    "external_user_id,email,stripe_customer_id,created_at,status,has_access,plan_slug,interval,"
    "stripe_price_id,current_period_end,cancel_at,trial_end,interval_count,quantity,pause_behavior,"
    "pause_resumes_at,subscriptions_with_access"
)


def add_customer(project, external_user_id, email="u@example.com", stripe_customer_id=None, subs=()):
    with db.block():
        customer = Customer.create(
            project=project,
            external_user_id=external_user_id,
            email=email,
            stripe_customer_id=stripe_customer_id,
            created_at=datetime(2026, 1, 2, 3, 4, 5),
        )
        for i, (status, started) in enumerate(subs):
            Subscription.create(
                project=project,
                customer=customer,
                stripe_subscription_id=f"sub_{external_user_id}_{i}",
                plan_slug="pro",
                stripe_price_id="price_pro",
                interval="yearly",
                stripe_status=status,
                status=status,
                started_at=started,
                current_period_end=datetime(2027, 1, 2),
            )
    return customer


def read_csv(response):
    return list(csv.reader(io.StringIO(response.body.decode("utf-8"))))


@pytest.mark.gen_test
async def test_json_export_has_every_customer_with_its_current_subscription(api, project, make_project):
    p = project.project
    add_customer(
        p,
        "u1",
        stripe_customer_id="cus_1",
        subs=[("cancelled", datetime(2026, 5, 1)), ("active", datetime(2026, 1, 1))],
    )
    add_customer(p, "u2", subs=[("cancelled", datetime(2026, 1, 1)), ("unpaid", datetime(2026, 3, 1))])
    add_customer(p, "u3")
    other = make_project(name="Other")
    add_customer(other.project, "intruder", subs=[("active", None)])
    response = await api("GET", "/api/customers/export")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    today = db.utcnow().date().isoformat()
    assert response.headers["Content-Disposition"] == f'attachment; filename="customers-{p.public_id}-{today}.json"'
    customers = body_of(response)["customers"]
    assert [c["external_user_id"] for c in customers] == ["u1", "u2", "u3"]
    first = customers[0]
    assert first["stripe_customer_id"] == "cus_1" and first["created_at"] == "2026-01-02T03:04:05Z"
    assert first["subscription"] == {
        "status": "active",
        "has_access": True,
        "plan_slug": "pro",
        "interval": "yearly",
        "interval_count": None,
        "quantity": None,
        "stripe_price_id": "price_pro",
        "current_period_end": "2027-01-02T00:00:00Z",
        "cancel_at": None,
        "trial_end": None,
        "pause_collection": None,
        "subscriptions_with_access": 1,
        "stripe_subscription_id": "sub_u1_1",
    }  # access wins over the more recent one
    assert customers[1]["subscription"]["stripe_subscription_id"] == "sub_u2_1"  # no access: most recent
    assert customers[1]["subscription"]["has_access"] is False
    assert customers[2]["subscription"] is None


@pytest.mark.gen_test
async def test_csv_export_and_formula_injection(api, project):
    add_customer(project.project, '=HYPERLINK("http://evil")', email="+1@example.com", subs=[("active", None)])
    add_customer(project.project, "-5", email="@me")
    add_customer(project.project, "\tx", email="\rmail")
    add_customer(project.project, 'plain, "quoted"', email="ok@example.com")
    response = await api("GET", "/api/customers/export?format=csv")
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=UTF-8"
    assert response.headers["Content-Disposition"].endswith('.csv"')
    assert response.body.decode().splitlines()[0] == CSV_HEADER
    rows = read_csv(response)
    assert rows[1][:2] == ['\'=HYPERLINK("http://evil")', "'+1@example.com"]
    assert rows[1][4:8] == ["active", "true", "pro", "yearly"]
    assert rows[2][:2] == ["'-5", "'@me"] and rows[2][4:] == [""] * 13
    assert rows[3][:2] == ["'\tx", "'\rmail"]
    assert rows[4][:2] == ['plain, "quoted"', "ok@example.com"]
    assert len(rows) == 5


@pytest.mark.gen_test
async def test_empty_export_and_bad_format(api):
    assert body_of(await api("GET", "/api/customers/export?format=json")) == {"customers": []}
    assert (await api("GET", "/api/customers/export?format=csv")).body.decode() == CSV_HEADER + "\r\n"
    bad = await api("GET", "/api/customers/export?format=xml")
    assert bad.code == 400
    assert body_of(bad)["error"] == {
        "status": 400,
        "code": "invalid_field",
        "message": "format must be json or csv",
        "field": "format",
    }
    assert (await api("GET", "/api/customers/export", key="")).code == 401


@pytest.mark.gen_test
async def test_csv_byte_order_mark_only_when_asked(api, project):
    add_customer(project.project, "zoë", email="zoë@example.com")
    plain = await api("GET", "/api/customers/export?format=csv")
    assert plain.body.startswith(CSV_HEADER.encode())  # scripts get plain UTF-8, as before
    marked = await api("GET", "/api/customers/export?format=csv&bom=true")
    assert marked.code == 200 and marked.body == b"\xef\xbb\xbf" + plain.body
    assert list(csv.reader(io.StringIO(marked.body.decode("utf-8-sig"))))[1][:2] == ["zoë", "zoë@example.com"]
    assert (await api("GET", "/api/customers/export?format=json&bom=true")).body.startswith(b'{"customers":')
    assert (await api("GET", "/api/customers/export?format=csv&bom=false")).body == plain.body
    bad = await api("GET", "/api/customers/export?format=csv&bom=yes")
    assert bad.code == 400 and body_of(bad)["error"]["field"] == "bom"


@pytest.mark.slow
@pytest.mark.gen_test(timeout=240)
async def test_100k_customers_are_streamed_page_by_page(api, project, make_project, monkeypatch, tmp_path):
    p = project.project
    created = datetime(2026, 1, 1)
    with db.block():
        for start in range(0, 100_000, 5000):
            with db.database.atomic():
                Customer.insert_many(
                    [
                        {
                            "project": p.id,
                            "external_user_id": f"user-{i}",
                            "email": f"u{i}@example.com",
                            "created_at": created,
                            "updated_at": created,
                        }
                        for i in range(start, start + 5000)
                    ]
                ).execute()
        ids = [c.id for c in Customer.select(Customer.id).where(Customer.project == p).limit(1000)]
        Subscription.insert_many(
            [
                {
                    "project": p.id,
                    "customer": cid,
                    "stripe_subscription_id": f"sub_{cid}",
                    "stripe_status": "active",
                    "status": "active",
                    "created_at": created,
                    "updated_at": created,
                    "synced_at": created,
                }
                for cid in ids
            ]
        ).execute()
    other = make_project(name="Other")
    add_customer(other.project, "user-intruder")

    # Pages are read in the export's child process: it reports each page's size through a file.
    sizes_file = tmp_path / "page-sizes"
    real_page = export.page

    def counting_page(*args, **kwargs):
        rows, last = real_page(*args, **kwargs)
        with open(sizes_file, "a") as sizes:
            sizes.write(f"{len(rows)}\n")
        return rows, last

    monkeypatch.setattr(export, "page", counting_page)
    received = []
    for fmt in ("csv", "json"):
        sizes_file.write_text("")
        received.clear()
        response = await api(
            "GET", f"/api/customers/export?format={fmt}", streaming_callback=received.append, request_timeout=200
        )
        assert response.code == 200
        page_sizes = [int(size) for size in sizes_file.read_text().split()]
        # Never more than one page of rows in hand, and the body left in many pieces.
        assert max(page_sizes) == export.PAGE_SIZE and len(page_sizes) == 100_000 // export.PAGE_SIZE + 1
        assert len(received) > 10  # the client got it in pieces (the network coalesces some pages)
        text = b"".join(received).decode()
        if fmt == "csv":
            rows = list(csv.reader(io.StringIO(text)))
            assert len(rows) == 100_001 and rows[0] == CSV_HEADER.split(",")
            assert sum(1 for r in rows[1:] if r[4] == "active") == 1000
            ids_seen = {r[0] for r in rows[1:]}
        else:
            customers = json.loads(text)["customers"]
            assert len(customers) == 100_000
            ids_seen = {c["external_user_id"] for c in customers}
        assert len(ids_seen) == 100_000 and "user-intruder" not in ids_seen


@pytest.mark.gen_test(timeout=60)
async def test_database_outage_mid_export_truncates_instead_of_faking_a_complete_file(api, project, monkeypatch):
    from pulse.db import DatabaseUnavailable

    with db.block():
        Customer.insert_many(
            [{"project": project.project.id, "external_user_id": f"u{i}"} for i in range(export.PAGE_SIZE + 10)]
        ).execute()
    real_page, calls = export.page, []

    def failing_page(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise DatabaseUnavailable()
        return real_page(*args, **kwargs)

    monkeypatch.setattr(export, "page", failing_page)
    with pytest.raises(HTTPStreamClosedError):  # the connection is cut: never a well-formed but partial file
        await api("GET", "/api/customers/export?format=json")
    monkeypatch.setattr(export, "page", real_page)
    assert (await api("GET", "/api/health", key="")).code == 200


@pytest.mark.gen_test
async def test_database_outage_before_the_first_page_is_a_clean_503(api, monkeypatch):
    from pulse.db import DatabaseUnavailable

    def down(*args, **kwargs):
        raise DatabaseUnavailable()

    monkeypatch.setattr(export, "page", down)
    response = await api("GET", "/api/customers/export?format=csv")
    assert response.code == 503 and body_of(response)["error"]["code"] == "database_unavailable"
    assert "Content-Disposition" not in response.headers


@pytest.mark.gen_test(timeout=60)
async def test_client_going_away_stops_the_export_child(api, project, base_url, monkeypatch, tmp_path):
    import asyncio
    import os
    import time

    from pulse import exportproc

    with db.block():
        Customer.insert_many(
            [{"project": project.project.id, "external_user_id": f"u{i}"} for i in range(export.PAGE_SIZE * 10)]
        ).execute()
    pages_file, real_page, pids = tmp_path / "pages", export.page, []

    def slow_page(*args, **kwargs):  # runs in the child: ten pages take 2 s there
        time.sleep(0.2)
        with open(pages_file, "a") as pages:
            pages.write("page\n")
        return real_page(*args, **kwargs)

    def recording_start(*args, **kwargs):
        pid, fd = real_start(*args, **kwargs)
        pids.append(pid)
        return pid, fd

    real_start = exportproc.start
    monkeypatch.setattr(export, "page", slow_page)
    monkeypatch.setattr(exportproc, "start", recording_start)
    host, port = base_url.split("//")[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = project.api_key.api_key
    writer.write(f"GET /api/customers/export?format=csv HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert await reader.read(100)  # the first page is on its way
    writer.close()
    (pid,) = pids
    for _ in range(150):
        try:
            os.kill(pid, 0)  # succeeds until the server has reaped the child
        except ProcessLookupError:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the export child still runs after its client went away")
    assert len(pages_file.read_text().split()) < 10  # stopped early, not run to the end
    assert (await api("GET", "/api/health", key="")).code == 200
