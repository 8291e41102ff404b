"""GET /api/openapi.json (SPEC 3.2): a valid OpenAPI 3.1 document that matches the running routes."""

import re

import pytest

from handlers.openapi import document
from tests.support import body_of


def api_route_patterns(app):
    """The regexes of every route the running app serves under /api/ and /sandbox/api/ (the sandbox API)."""
    patterns = []
    for rule in app.wildcard_router.rules:
        regex = getattr(rule.matcher, "regex", None)
        if regex is not None and regex.pattern.startswith(("/api/", "/sandbox/api/")):
            patterns.append(regex)
    return patterns


def sample_path(template, item=None):
    """The path with each parameter filled: the first value of its enum, else an id."""
    enums = {
        p["name"]: p["schema"]["enum"][0]
        for operation in (item or {}).values()
        for p in operation.get("parameters", [])
        if p["in"] == "path" and "enum" in p["schema"]
    }
    return re.sub(r"\{([^}]+)\}", lambda m: enums.get(m.group(1), "proj_sample123"), template)


@pytest.mark.gen_test
async def test_document_is_served_and_matches_every_route(api, app):
    response = await api("GET", "/api/openapi.json", key="")
    assert response.code == 200
    doc = body_of(response)
    assert doc == document() and doc["openapi"] == "3.1.0"
    routes = api_route_patterns(app)
    samples = {template: sample_path(template, item) for template, item in doc["paths"].items()}
    for template, sample in samples.items():
        assert any(r.fullmatch(sample) for r in routes), f"{template} is documented but not served"
    for route in routes:
        assert any(route.fullmatch(s) for s in samples.values()), f"{route.pattern} is served but not documented"
    assert set(samples) >= {
        "/api/health",
        "/api/checkout",
        "/api/portal",
        "/api/subscription",
        "/api/customers/export",
        "/api/webhook",
        "/api/webhook/{project_id}",
        "/api/openapi.json",
    }


def test_document_loads_in_schemathesis_with_every_operation():
    import schemathesis

    schema = schemathesis.openapi.from_dict(document())
    operations = [result.ok() for result in schema.get_all_operations()]
    # 12, and issue 16: 8 webhook-endpoint operations, 6 lifecycle and entitlements; 11 of the sandbox API
    assert len(operations) == 37


def test_every_operation_documents_the_error_envelope_and_request_id():
    for path, item in document()["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and method != "head" and path != "/api/health":
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
                if method != "head" and status != "302":
                    assert "X-Request-Id" in response["headers"], (path, method, status)
