"""Helpers and constants shared by the tests (fixtures live in conftest.py and the *_support plugins)."""

import json
import os
from urllib.parse import urlsplit

from pulse import db
from pulse.models import MODELS

MYSQL_URL = os.environ.get("PULSE_TEST_MYSQL_URL")
TEST_SECRET = "test-secret-key-0123456789abcdef"


def body_of(response):
    """The decoded JSON body of a response."""
    return json.loads(response.body.decode("utf-8"))


def mysql_server_url(url):
    """(urlsplit parts, PyMySQL connect kwargs) for the MySQL server of `url`."""
    parts = urlsplit(url)
    return parts, dict(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
    )


def empty_mysql(url):
    """Delete every row of every model table in the MySQL database at `url`."""
    target = db.open_database(url)
    with target.connection_context():
        target.execute_sql("SET FOREIGN_KEY_CHECKS=0")
        for model in reversed(MODELS):
            target.execute_sql(f"DELETE FROM `{model._meta.table_name}`")
        target.execute_sql("SET FOREIGN_KEY_CHECKS=1")
