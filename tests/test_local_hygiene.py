"""Files and processes (security review L9), and the one password rule of the CLI and the console (issue 12.5)."""

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from pulse import projects
from tests.console_support import Console, text
from tests.live_server import ROOT, LiveServer
from tests.test_login_attacks import run_async


def run_cli(env, *args, stdin=""):
    done = subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.fixture
def env(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    clean.update(PULSE_DATABASE_URL=f"sqlite:///{tmp_path / 'pulse.db'}", PULSE_BCRYPT_ROUNDS="4")
    return clean


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sqlite_database_wal_and_shm_are_created_0600_under_a_permissive_umask(tmp_path, env):
    previous = os.umask(0o022)  # the review's set-up: files would be 0644
    try:
        server = LiveServer(env["PULSE_DATABASE_URL"], env={**env, "PULSE_SECRET_KEY": ""}).start()
        try:
            server.create_project("Files", admin_email="files@x.test")  # writes: the WAL and SHM exist now
            assert server.healthy()
            files = {p.name: mode(p) for p in tmp_path.iterdir()}
        finally:
            server.stop()
    finally:
        os.umask(previous)
    assert {"pulse.db", "pulse.db-wal", "pulse.db-shm", "pulse.secret"} <= set(files), files
    assert all(m == 0o600 for m in files.values()), {name: oct(m) for name, m in files.items()}


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604])
def test_a_pulse_secret_others_can_read_is_refused_with_one_line(tmp_path, env, loose):
    secret = tmp_path / "pulse.secret"
    secret.write_text("a-long-enough-secret-key-0123456789\n")
    secret.chmod(loose)
    done = run_cli(env, "migrate")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"run.py: configuration error: {secret} is readable by other users (mode {loose:04o}); run: chmod 600 {secret}"
    )
    secret.chmod(0o600)
    assert run_cli(env, "migrate").returncode == 0


def test_cli_secrets_from_stdin_and_the_environment_stay_out_of_argv(tmp_path, env):
    """`-` reads a line of stdin, `env:NAME` a variable: `ps` shows neither secret."""
    env = dict(env, PULSE_SECRET_KEY="hygiene-secret-key-0123456789", NEW_STRIPE_KEY="sk_test_" + "E" * 30)
    password, webhook = "stdin admin password", "whsec_" + "W" * 30
    code = "import sys, time, run; time.sleep(0.5); sys.exit(run.main(sys.argv[1:]))"
    args = [
        "create-project",
        "Quiet",
        "--admin-email",
        "quiet@x.test",
        "--admin-password",
        "-",
        "--stripe-secret-key",
        "env:NEW_STRIPE_KEY",
        "--stripe-webhook-secret",
        "-",
        "--json",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.2)
    with open(f"/proc/{proc.pid}/cmdline", "rb") as handle:  # what `ps` shows to every local user
        argv = handle.read().decode()
    out, err = proc.communicate(f"{password}\n{webhook}\n", timeout=60)
    assert proc.returncode == 0, err
    for secret in (password, webhook, env["NEW_STRIPE_KEY"]):
        assert secret not in argv and secret not in out + err
    created = json.loads(out)
    server = LiveServer(env["PULSE_DATABASE_URL"], env=env).start()
    try:
        import tornado.httpclient

        async def sign_in():
            client = tornado.httpclient.AsyncHTTPClient(force_instance=True)
            try:
                return await Console(client, server.base_url).login("quiet@x.test", password)
            finally:
                client.close()

        assert run_async(sign_in()).code == 302  # the stdin password is the account's
        status, _, body = server.request(
            "GET", "/api/subscription?external_user_id=x", headers={"X-API-Key": created["api_key"]}
        )
        assert status == 404, body
    finally:
        server.stop()
    shown = json.loads(
        run_cli(env, "set-stripe", created["project_id"], "--secret-key", "env:NEW_STRIPE_KEY", "--json").stdout
    )
    assert shown["updated"] == {"stripe_secret_key": "sk_test_…EEEE"}
    missing = run_cli(env, "set-stripe", created["project_id"], "--secret-key", "env:NOT_SET_ANYWHERE")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].endswith(
        "the variable NOT_SET_ANYWHERE is not set"
    )
    empty = run_cli(env, "set-stripe", created["project_id"], "--webhook-secret", "-", stdin="")
    assert empty.returncode == 2 and "no line to read on stdin" in empty.stderr


# ---------------------------------------------------------------- one password rule (issue 12.5)


def test_the_cli_and_the_console_share_one_minimum_length(tmp_path, env):
    env = dict(env, PULSE_SECRET_KEY="hygiene-secret-key-0123456789")
    nine, ten = "n" * 9, "t" * 10
    short = run_cli(env, "create-project", "Short", "--admin-email", "s@x.test", "--admin-password", nine)
    assert short.returncode == 2
    assert (
        short.stderr.strip().splitlines()[-1]
        == f"run.py: error: --admin-password must be at least {projects.MIN_PASSWORD_LENGTH} characters"
    )
    assert run_cli(env, "create-project", "Ok", "--admin-email", "s@x.test", "--admin-password", ten).returncode == 0
    with pytest.raises(projects.Refused, match="at least 10 characters"):
        projects.validate_admin_password(nine)
    with pytest.raises(projects.Refused, match="at most 72 bytes"):
        projects.validate_admin_password("é" * 37)


@pytest.mark.gen_test(timeout=60)
async def test_the_console_applies_the_same_rule(http_client, base_url, project):
    console = Console(http_client, base_url)
    await console.login(project.admin.email)
    response = await console.post(
        "/console/account",
        {"current_password": "correct horse battery", "new_password": "n" * 9, "confirm_password": "n" * 9},
    )
    assert response.code == 400 and "must be at least 10 characters" in text(response)


@pytest.mark.parametrize(
    "secret_key, webhook_secret, ok",
    [
        ("sk_test_" + "a" * 24, "whsec_" + "b" * 24, True),
        ("rk_live_" + "a" * 24, None, True),
        ("pk_test_" + "a" * 24, None, False),
        ("sk_test_ab\r\nX-Evil: 1", None, False),
        ("sk_" + "a" * 30, None, False),
        (None, "whsec_with space", False),
        (None, "wh_" + "b" * 24, False),
    ],
)
def test_stripe_secret_shapes_are_checked_once(secret_key, webhook_secret, ok):
    if ok:
        projects.validate_stripe_secrets(secret_key, webhook_secret)
    else:
        with pytest.raises(projects.Refused):
            projects.validate_stripe_secrets(secret_key, webhook_secret)
