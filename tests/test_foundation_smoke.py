import pytest
from tests.conftest import body_of


@pytest.mark.gen_test
async def test_health_ok(api):
    response = await api("GET", "/api/health", key="")
    assert response.code == 200
    assert body_of(response)["status"] == "ok"
    assert response.headers["X-Request-Id"]


@pytest.mark.gen_test
async def test_unknown_route(api):
    response = await api("GET", "/api/nope")
    assert response.code == 404
    assert body_of(response) == {"error": {"status": 404, "code": "not_found", "message": "No such endpoint."}}


@pytest.mark.gen_test
async def test_405(api):
    response = await api("DELETE", "/api/health")
    assert response.code == 405, response.body
    assert response.headers["Allow"] == "GET, HEAD"
    assert body_of(response)["error"]["code"] == "method_not_allowed"
