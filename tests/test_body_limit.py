"""Bodies over 1 MiB (SPEC 3.1): 413 JSON with Content-Length or chunked, and the server stays healthy."""

import asyncio
import json
from urllib.parse import urlsplit

import pytest

from handlers.base import ApiHandler
from tests.support import body_of

MIB = 1024 * 1024


class Sink(ApiHandler):
    auth_required = False

    def post(self):
        self.write_json({"bytes": len(self.raw_body)})


class JsonEcho(ApiHandler):
    auth_required = False

    def post(self):
        self.write_json(self.json_body())


@pytest.fixture
def app(app):
    app.add_handlers(r".*", [(r"/api/_test/sink", Sink), (r"/api/_test/json", JsonEcho)])
    return app


async def raw_exchange(base_url, head, body_chunks):
    """Send `head` and then as much of `body_chunks` as the server reads; return what it answered."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(head.encode())
    try:
        for chunk in body_chunks:
            writer.write(chunk)
            await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server stopped reading: expected once it has answered 413
    try:
        data = await asyncio.wait_for(reader.read(), timeout=10)
    except ConnectionResetError:
        data = b""
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionResetError, BrokenPipeError):
        pass
    return data


def parse(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers.get(b"Content-Length", len(body)))
    return status, headers, json.loads(body[:length])


@pytest.mark.gen_test(timeout=30)
async def test_declared_oversize_body_is_refused_and_the_answer_arrives(base_url, api):
    head = (
        f"POST /api/_test/sink HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {2 * MIB}\r\n\r\n"
    )
    status, headers, body = parse(await raw_exchange(base_url, head, [b"a" * 65536] * 32))
    assert status == 413
    assert headers[b"Content-Type"] == b"application/json; charset=UTF-8"
    assert body["error"]["code"] == "payload_too_large"
    assert (await api("GET", "/api/health", key="")).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_expect_continue_is_refused_before_the_body_is_sent(base_url, http_server):
    head = (
        f"POST /api/_test/sink HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
        f"Content-Length: {MIB + 1}\r\n\r\n"
    )
    status, _, body = parse(await raw_exchange(base_url, head, []))
    assert status == 413 and body["error"]["code"] == "payload_too_large"


@pytest.mark.gen_test(timeout=30)
async def test_chunked_oversize_body_is_cut_at_one_mebibyte(base_url, api):
    head = "POST /api/_test/sink HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"a" * 65536
    chunks = [b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(40)] + [b"0\r\n\r\n"]
    status, _, body = parse(await raw_exchange(base_url, head, chunks))
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert body["error"]["status"] == 413
    for _ in range(3):  # healthy afterwards, on new connections
        assert (await api("GET", "/api/health", key="")).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_exactly_one_mebibyte_is_accepted(api):
    response = await api("POST", "/api/_test/sink", key="", body=b"a" * MIB)
    assert response.code == 200 and body_of(response) == {"bytes": MIB}
    over = await api("POST", "/api/_test/sink", key="", body=b"a" * (MIB + 1))
    assert over.code == 413 and body_of(over)["error"]["code"] == "payload_too_large"


@pytest.mark.gen_test
@pytest.mark.parametrize("text", ['"\\udc00x"', '"a\\uD800"', '"\\ud800\\u0041"'])
async def test_unpaired_surrogate_escapes_are_invalid_json_not_a_500(api, text):
    response = await api("POST", "/api/_test/json", key="", body='{"external_user_id": ' + text + "}")
    assert response.code == 400 and body_of(response)["error"]["code"] == "invalid_json"


@pytest.mark.gen_test
async def test_escaped_surrogate_pairs_are_fine(api):
    response = await api("POST", "/api/_test/json", key="", body='{"name": "\\ud83d\\ude00"}')
    assert response.code == 200 and body_of(response) == {"name": "\U0001f600"}
