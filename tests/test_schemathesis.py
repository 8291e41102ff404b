"""Schemathesis (every check) against the running API, authenticated, with the fake Stripe behind it."""

import asyncio
import os
import sys
from pathlib import Path

import pytest

from pulse.config import RateLimit

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
WEBHOOK_SECRET = "whsec_schemathesis_0123456789"
# A webhook body is only valid with Stripe's HMAC signature, which a fuzzer cannot make: for those
# operations a 400 on schema-valid data is right, so only that one check is off there.
CONFIG = """
[checks]
enabled = true

[[operations]]
include-path-regex = "^/api/webhook"
checks.positive_data_acceptance.enabled = false
"""


@pytest.fixture
def config_overrides(fake_stripe):
    # Fuzzing sends thousands of requests from one IP with one key: lift the limits for this run.
    return fake_stripe.config_overrides(
        stripe_webhook_secret=WEBHOOK_SECRET,
        rate_limit_authenticated=RateLimit(1_000_000, 60),
        rate_limit_anonymous=RateLimit(1_000_000, 60),
    )


@pytest.mark.slow
@pytest.mark.gen_test(timeout=300)
async def test_schemathesis_all_checks(http_server, base_url, make_project, tmp_path):
    project = make_project(stripe_webhook_secret=WEBHOOK_SECRET)
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(tmp_path / "schemathesis.toml"),
        "run",
        f"{base_url}/api/openapi.json",
        "--header",
        f"X-API-Key: {project.api_key.api_key}",
        "--max-examples",
        "60",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "20261124",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--suppress-health-check",
        "too_slow",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-20000:]
