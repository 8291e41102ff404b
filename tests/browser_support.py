"""What every browser test needs: the Chromium binary, its flags, and the skip-or-fail rule when it is missing."""

import os

import pytest

CHROMIUM = os.environ.get("PULSE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium():
    """Call at module level: skip without Chromium, unless PULSE_TEST_REQUIRE_ALL=1 (CI), where the launch fails."""
    if not os.access(CHROMIUM, os.X_OK) and os.environ.get("PULSE_TEST_REQUIRE_ALL") != "1":
        pytest.skip(
            f"browser tests need Chromium at {CHROMIUM}: apt-get install chromium fonts-dejavu-core "
            "(or set PULSE_TEST_CHROMIUM)",
            allow_module_level=True,
        )
