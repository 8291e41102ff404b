"""Fixtures: a config and app per test on SQLite, and again on MySQL when PULSE_TEST_MYSQL_URL is set."""

import json
import logging
import os
import re
import secrets
from urllib.parse import urlunsplit

import pymysql
import pytest
import tornado.httpserver

import run
from pulse import db
from pulse.config import load_config
from pulse.migrations import migrate_database
from pulse.security import SecretBox
from tests.support import MYSQL_URL, TEST_SECRET, empty_mysql, mysql_server_url

# Fixtures shared by several test modules, loaded here rather than imported by name.
pytest_plugins = ["tests.webhook_support", "tests.webhook_receiver", "tests.console_support"]

BACKENDS = ["sqlite"] + (["mysql"] if MYSQL_URL else [])
# bcrypt at its minimum cost: half the suite's time went on cost 12. Subprocess servers inherit it.
os.environ.setdefault("PULSE_BCRYPT_ROUNDS", "4")


@pytest.fixture(scope="session")
def mysql_database_url():
    """A fresh MySQL database for this test run, dropped at the end."""
    if not MYSQL_URL:
        pytest.fail("mysql backend requested without PULSE_TEST_MYSQL_URL")
    parts, server = mysql_server_url(MYSQL_URL)
    name = f"pulse_test_{os.getpid()}_{secrets.token_hex(3)}"
    conn = pymysql.connect(**server, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    db.bind(url)
    migrate_database()
    db.database.close()
    yield url
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A migrated, empty database URL: a temp SQLite file, or the run's MySQL database emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'pulse.db'}"
        db.bind(url)
        migrate_database()
        db.database.close()
        return url
    url = request.getfixturevalue("mysql_database_url")
    empty_mysql(url)
    return url


@pytest.fixture
def config_overrides():
    """Override in a test module to change settings for its app."""
    return {}


@pytest.fixture
def config(db_url, config_overrides):
    overrides = {"bcrypt_rounds": 4, **config_overrides}
    return load_config(environ={}, database_url=db_url, secret_key=TEST_SECRET, **overrides)


@pytest.fixture
def app(config):
    application = run.make_app(config)
    yield application
    db.database.close()


@pytest.fixture
def http_server(request, io_loop, _unused_port, app):
    """pytest-tornado's server, but with `app` as a static dependency so the db_url params apply."""
    server = tornado.httpserver.HTTPServer(app)
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)


@pytest.fixture
def box():
    return SecretBox(TEST_SECRET)


@pytest.fixture
def make_project(app, box):
    """Create projects inside the test's database: make_project(name="Acme") -> NewProject."""
    from pulse import projects

    def factory(name="Acme", admin_email=None, **kwargs):
        email = admin_email or f"admin-{secrets.token_hex(3)}@{name.lower()}.test"
        kwargs.setdefault("admin_password", "correct horse battery")
        with db.block():
            return projects.create_project(name, email, box, **kwargs)

    return factory


@pytest.fixture
def project(make_project):
    return make_project()


@pytest.fixture
def api(http_client, base_url, project):
    """api(method, path, json=..., key=..., headers=...) -> response (errors not raised)."""

    async def call(method, path, json_body=None, key=None, headers=None, body=None, **kwargs):
        all_headers = {"X-API-Key": project.api_key.api_key if key is None else key}
        if json_body is not None:
            body = json.dumps(json_body)
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        if not all_headers["X-API-Key"]:
            del all_headers["X-API-Key"]
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = ""
        return await http_client.fetch(
            base_url + path,
            method=method,
            headers=all_headers,
            body=body,
            raise_error=False,
            follow_redirects=False,
            **kwargs,
        )

    return call


@pytest.fixture
def fake_stripe(io_loop):
    """An in-memory Stripe server on the test's IOLoop (tests/fake_stripe.py).

    To point the app at it, override in the test module:
    `config_overrides = pytest.fixture(lambda fake_stripe: fake_stripe.config_overrides())`.
    """
    from pulse import billing
    from tests.fake_stripe import FakeStripe

    fake = FakeStripe().start()
    yield fake
    io_loop.run_sync(billing.close_clients)
    io_loop.run_sync(fake.stop)


# ---------------------------------------------------------------- no secret in any log line of the run

_SHAPED_SECRET = re.compile(
    r"pp_(?:live|test)_[0-9A-Za-z]{32,}|(?:sk|rk)_(?:live|test)_[0-9A-Za-z_]{12,}|whsec_[0-9A-Za-z_]{12,}"
)


class _SecretWatch(logging.Handler):
    """Sees every record the app logs during the run, raw and as production formats it."""

    def __init__(self, known):
        super().__init__()
        from pulse.logs import JsonFormatter

        self.formatter_ = JsonFormatter()
        self.known = known
        self.leaks = []

    def emit(self, record):
        if record.name.startswith("tests"):
            return
        try:
            raw = record.getMessage()
            if record.exc_info:
                raw += "\n" + logging.Formatter().formatException(record.exc_info)
            line = self.formatter_.format(record)
        except Exception:  # a broken record is not our concern here
            return
        found = [name for name, value in self.known.items() if value in raw or value in line]
        found += _SHAPED_SECRET.findall(raw) + _SHAPED_SECRET.findall(line)
        if found and len(self.leaks) < 20:
            self.leaks.append(f"{record.name}: {found} in {line[:300]}")


@pytest.fixture(scope="session", autouse=True)
def no_secrets_in_logs():
    """Every log record of the whole test run (INFO and up, as served) must be free of test secrets."""
    from tests.fake_stripe import FAKE_SECRET_KEY

    watch = _SecretWatch(
        {"PULSE_SECRET_KEY": TEST_SECRET, "Stripe key": FAKE_SECRET_KEY, "admin password": "correct horse battery"}
    )
    root = logging.getLogger()
    previous = root.level
    root.setLevel(min(previous, logging.INFO) if previous else logging.INFO)
    root.addHandler(watch)
    yield watch
    root.removeHandler(watch)
    root.setLevel(previous)
    assert not watch.leaks, "secrets in log lines during the test run:\n" + "\n".join(watch.leaks)
