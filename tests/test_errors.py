"""The one error envelope (SPEC 3.1), locked for every status the base handler produces."""

import logging

import pytest

from handlers.base import ApiHandler, invalid, missing
from pulse.db import DatabaseUnavailable
from tests.support import body_of

SECRET_IN_EXCEPTION = "sk_live_THIS_MUST_NOT_LEAK_1234567890"


class BoomHandler(ApiHandler):
    def get(self):
        raise RuntimeError(f"exploded with {SECRET_IN_EXCEPTION}")


class EchoHandler(ApiHandler):
    def post(self):
        body = self.json_body()
        if "email" not in body:
            raise missing("email")
        if not isinstance(body["email"], str):
            raise invalid("email", "email must be a string")
        self.write_json({"ok": True, "project": self.project.public_id})


class DbDownHandler(ApiHandler):
    auth_required = False

    def get(self):
        raise DatabaseUnavailable()


@pytest.fixture
def app(app):
    app.add_handlers(
        r".*",
        [(r"/api/_test/boom", BoomHandler), (r"/api/_test/echo", EchoHandler), (r"/api/_test/dbdown", DbDownHandler)],
    )
    return app


def assert_envelope(response, status, code, field=None):
    assert response.code == status
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert response.headers["X-Request-Id"]
    body = body_of(response)
    assert set(body) == {"error"}
    error = body["error"]
    expected_keys = {"status", "code", "message"} | ({"field"} if field else set())
    assert set(error) == expected_keys, error
    assert error["status"] == status and error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    if field:
        assert error["field"] == field
    assert "Traceback" not in response.body.decode()
    return error


@pytest.mark.gen_test
async def test_401_missing_unknown_and_malformed_keys(api):
    for key in ("", "pp_live_" + "x" * 40, "nonsense", "pp_live_short"):
        assert_envelope(
            await api("POST", "/api/_test/echo", json_body={"email": "a@b.co"}, key=key), 401, "unauthorized"
        )


@pytest.mark.gen_test
async def test_valid_key_reaches_the_handler(api, project):
    response = await api("POST", "/api/_test/echo", json_body={"email": "a@b.co"})
    assert response.code == 200
    assert body_of(response) == {"ok": True, "project": project.project.public_id}


@pytest.mark.gen_test
async def test_404_unknown_route_any_method(api):
    for method in ("GET", "POST", "DELETE", "PUT"):
        assert_envelope(await api(method, "/api/does-not-exist"), 404, "not_found")
    assert_envelope(await api("GET", "/nothing/here"), 404, "not_found")


@pytest.mark.gen_test
async def test_405_lists_allowed_methods(api):
    response = await api("PUT", "/api/health", body="{}")
    assert_envelope(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.gen_test
async def test_400_invalid_json_and_invalid_field(api):
    assert_envelope(await api("POST", "/api/_test/echo", body="{nope"), 400, "invalid_json")
    assert_envelope(await api("POST", "/api/_test/echo", body="[1, 2]"), 400, "invalid_json")
    assert_envelope(await api("POST", "/api/_test/echo", body=""), 400, "invalid_json")
    assert_envelope(await api("POST", "/api/_test/echo", json_body={"email": 5}), 400, "invalid_field", field="email")


@pytest.mark.gen_test
async def test_422_missing_field(api):
    error = assert_envelope(await api("POST", "/api/_test/echo", json_body={}), 422, "missing_field", field="email")
    assert error["message"] == "email is required"


@pytest.mark.gen_test
async def test_413_with_content_length(api):
    response = await api("POST", "/api/_test/echo", body="x" * (1024 * 1024 + 1))
    assert_envelope(response, 413, "payload_too_large")
    # Exactly 1 MiB is allowed through to the handler (which then rejects the non-JSON).
    assert (await api("POST", "/api/_test/echo", body=" " * (1024 * 1024))).code == 400


@pytest.mark.gen_test
async def test_500_never_leaks(api, caplog):
    with caplog.at_level(logging.INFO):
        response = await api("GET", "/api/_test/boom")
    error = assert_envelope(response, 500, "internal_error")
    assert SECRET_IN_EXCEPTION not in response.body.decode()
    assert error["message"] == "Internal server error."
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "RuntimeError" in logged
    assert SECRET_IN_EXCEPTION not in logged


@pytest.mark.gen_test
async def test_503_database_unavailable(api):
    assert_envelope(await api("GET", "/api/_test/dbdown"), 503, "database_unavailable")


@pytest.mark.gen_test
async def test_request_id_echoed_or_generated(api):
    response = await api("GET", "/api/health", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    response = await api("GET", "/api/health", headers={"X-Request-Id": "bad id with spaces"})
    assert response.headers["X-Request-Id"].startswith("req_")
    error = await api("GET", "/api/nope", headers={"X-Request-Id": "trace-9"})
    assert error.headers["X-Request-Id"] == "trace-9"


@pytest.mark.gen_test
async def test_undecodable_query_string_is_invalid_field(api):
    response = await api("GET", "/api/subscription?external_user_id=%ED%B0%80")
    assert_envelope(response, 400, "invalid_field", field="external_user_id")
