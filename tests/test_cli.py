"""The command line of SPEC 1, run as a real process: JSON output, exit codes, no tracebacks."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli_env(db_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(PULSE_DATABASE_URL=db_url, PULSE_SECRET_KEY="cli-test-secret-0123456789", PYTHONUNBUFFERED="1")
    return env


def cli(env, *args):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env, port, log_path):
    """`run.py serve` in a subprocess, its stderr (the logs) going to `log_path`."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def wait_for_port(port, process, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not start")


def http_get(port, path, key=None):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_create_project_json_and_key_works_against_the_api(cli_env, tmp_path):
    result = cli(cli_env, "create-project", "Acme", "--admin-email", "A@Acme.test", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"project_id", "name", "api_key", "admin_email", "admin_password", "webhook_path", "sandbox"}
    assert data["name"] == "Acme" and data["admin_email"] == "a@acme.test"
    assert data["api_key"].startswith("pp_live_") and len(data["api_key"]) >= 8 + 32
    assert data["webhook_path"] == f"/api/webhook/{data['project_id']}"

    again = json.loads(cli(cli_env, "create-project", "Beta", "--admin-email", "a@acme.test", "--json").stdout)
    assert "admin_password" not in again  # existing account joined, no new password
    given = json.loads(
        cli(
            cli_env,
            "create-project",
            "Gamma",
            "--admin-email",
            "g@acme.test",
            "--admin-password",
            "a-long-password",
            "--json",
        ).stdout
    )
    assert "admin_password" not in given

    key = json.loads(cli(cli_env, "create-api-key", data["project_id"], "--label", "ci", "--json").stdout)
    assert set(key) == {"api_key", "key_id", "prefix"} and key["api_key"].startswith(key["prefix"])

    port = free_port()
    server = start_server(cli_env, port, tmp_path / "server.log")
    try:
        wait_for_port(port, server)
        for api_key in (data["api_key"], key["api_key"]):
            status, body = http_get(port, "/api/subscription?external_user_id=nobody", api_key)
            assert status != 401, body
        status, body = http_get(port, "/api/subscription?external_user_id=nobody", "pp_live_" + "0" * 40)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=15) == 0
    logs = (tmp_path / "server.log").read_text()
    assert data["api_key"] not in logs and key["api_key"] not in logs


def test_set_stripe_prints_masked_values(cli_env):
    project = json.loads(cli(cli_env, "create-project", "Acme", "--admin-email", "a@acme.test", "--json").stdout)
    secret = "sk_test_" + "S3cr3tValue" * 3 + "a1b2"
    result = cli(
        cli_env,
        "set-stripe",
        project["project_id"],
        "--secret-key",
        secret,
        "--webhook-secret",
        "whsec_abcdefghijklmnopqrst",
    )
    assert result.returncode == 0
    assert "sk_test_…a1b2" in result.stdout and secret not in result.stdout + result.stderr
    assert "whsec_abcdefghijklmnopqrst" not in result.stdout


@pytest.mark.parametrize(
    "args,status,needle",
    [
        (["create-project", "Acme"], 2, "--admin-email"),
        (["create-project", "Acme", "--admin-email", "not-an-email"], 2, "invalid --admin-email"),
        (["create-project", "Acme", "--admin-email", "a@b.co", "--admin-password", "short-pw1"], 2, "at least 10"),
        (["create-api-key", "proj_doesnotexist"], 1, "no project"),
        (["set-stripe", "proj_doesnotexist", "--secret-key", "sk_test_x"], 1, "no project"),
        (["set-stripe", "proj_x"], 2, "--secret-key"),
        (["set-stripe", "proj_x", "--secret-key", "pk_test_oops"], 2, "sk_"),
        (["frobnicate"], 2, "invalid choice"),
        (["serve", "--processes", "0"], 2, "--processes"),
    ],
)
def test_errors_are_one_line_with_the_right_status(cli_env, args, status, needle):
    result = cli(cli_env, *args)
    assert result.returncode == status
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_bad_setting_exits_2_with_one_line(cli_env):
    result = cli({**cli_env, "PULSE_PORT": "abc"}, "migrate")
    assert result.returncode == 2
    assert result.stderr.strip() == "run.py: configuration error: PULSE_PORT must be a whole number (got 'abc')"


def test_migrate_is_idempotent(cli_env):
    result = cli(cli_env, "migrate", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == {"applied": []}


def test_unreachable_database_is_one_line(cli_env):
    result = cli({**cli_env, "PULSE_DATABASE_URL": "mysql://root@127.0.0.1:1/none"}, "migrate")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("run.py: error: the database is unreachable")


def wait_until_serving(log_path, process, timeout=20.0):
    """The port accepts connections as soon as it is bound; the server handles SIGTERM once it logs this."""
    deadline = time.monotonic() + timeout
    while "serving on" not in log_path.read_text():
        assert process.poll() is None, "server exited"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)


def test_sigterm_finishes_in_flight_requests(cli_env, tmp_path):
    """A request in flight when SIGTERM arrives still gets its answer; then exit 0."""
    port = free_port()
    server = start_server(cli_env, port, tmp_path / "server.log")
    try:
        wait_for_port(port, server)
        wait_until_serving(tmp_path / "server.log", server)  # on a loaded machine start-up takes seconds
        # A chunked upload that we finish only after SIGTERM keeps a request in flight.
        with socket.create_connection(("127.0.0.1", port)) as sock:  # closed even when an assert fails
            sock.sendall(b"POST /api/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n")
            time.sleep(0.3)
            server.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            assert server.poll() is None, "exited with a request still in flight"
            sock.sendall(b"0\r\n\r\n")
            reply = sock.recv(65536).decode()
        assert reply.startswith("HTTP/1.1 405"), reply
        assert server.wait(timeout=15) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def test_a_worker_that_dies_is_replaced(cli_env, tmp_path):
    port = free_port()
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "serve", "--port", str(port), "--processes", "2"],
            env=cli_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_for_port(port, server)
        deadline = time.monotonic() + 20
        while len(_children(server.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = _children(server.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = _children(server.pid)
            if len(now) == 2 and first[0] not in now:
                break
            time.sleep(0.05)
        now = _children(server.pid)
        assert len(now) == 2 and first[0] not in now, now
        for _ in range(4):
            assert http_get(port, "/api/health")[0] == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_serve_on_a_port_in_use_names_it_and_how_to_choose_another(cli_env):
    """QA #6/#13: not just "Address already in use": which address, and --port / PULSE_PORT."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(cli_env, "serve", "--port", str(port))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"run.py: error: cannot listen on 127.0.0.1:{port}: Address already in use"), line
    assert "--port" in line and "PULSE_PORT" in line, line


@pytest.mark.parametrize("secret", [True, False], ids=["PULSE_SECRET_KEY set", "key file"])
def test_a_sqlite_database_in_a_missing_directory_says_to_create_it(cli_env, tmp_path, secret):
    """QA #13: SQLite makes the file, never its directory; the message says so instead of "pulse.secret"."""
    folder = tmp_path / "nowhere" / "deeper"
    env = {**cli_env, "PULSE_DATABASE_URL": f"sqlite:///{folder}/pulse.db"}
    if not secret:
        env.pop("PULSE_SECRET_KEY")
    result = cli(env, "migrate")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and f"mkdir -p {folder}" in line and "does not exist" in line, line
    assert not folder.exists()
