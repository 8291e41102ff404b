"""The README documents every setting and opens with the newcomer's two commands."""

from pathlib import Path

from pulse.config import SETTINGS, TABLE

README_PATH = Path(__file__).resolve().parent.parent / "README.md"
README = README_PATH.read_text()


def test_every_setting_is_documented_in_the_configuration_table():
    table = [line for line in README.splitlines() if line.startswith("| `PULSE_") and "`PULSE_TEST_" not in line]
    documented = {line.split("`")[1] for line in table}
    assert set(SETTINGS) <= documented, sorted(set(SETTINGS) - documented)
    assert documented <= set(SETTINGS), sorted(documented - set(SETTINGS))


def test_the_configuration_table_gives_each_default():
    rows = [line for line in README.splitlines() if line.startswith("| `PULSE_")]
    cells = {row.split("`")[1]: row.split("|")[2].replace("`", "") for row in rows}
    wrong = {
        setting.name: setting.default_text()
        for setting in TABLE
        if setting.default_text() not in cells.get(setting.name, "")
    }
    assert not wrong, wrong


def test_readme_opens_with_make_run_and_make_test():
    first_block = README.split("```", 2)[1]
    commands = [
        line.split("#")[0].strip() for line in first_block.splitlines() if line.strip() and not line.startswith("sh")
    ]
    assert commands == ["make run", "make test"]


def _code_lines():
    """Every line of the README's fenced and indented code blocks, plus the command table's first cells."""
    lines, fenced = [], False
    for line in README.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced or line.startswith("    "):
            lines.append(line.strip())
        elif line.startswith("| `") and "run.py" not in line:
            lines.append("run.py " + line.split("`")[1])  # the "Command line" table: `serve [--host H] …`
    return lines


def test_every_command_in_the_readme_exists_in_the_cli_and_the_makefile():
    import argparse
    import re

    import run

    parser = run.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    targets = set(re.findall(r"^([a-z][\w.-]*):", (README_PATH.parent / "Makefile").read_text(), re.M))
    checked = set()
    for line in _code_lines():
        for found in re.finditer(r"\brun\.py((?:\s+[^\s|;&#`')]+)*)", line):
            words = found.group(1).split()
            if not words or words[0].startswith("-"):
                words = ["serve"] + words  # no command: serve, with the main parser's options
            name, options = words[0], [w.strip("[]").split("=")[0] for w in words[1:] if w.strip("[").startswith("--")]
            if not re.fullmatch(r"[a-z][a-z-]*", name):
                continue  # table rows of settings, not commands
            assert name in commands, f"README runs `run.py {name}`, which the CLI does not have: {line}"
            known = commands[name]._option_string_actions
            assert all(o in known for o in options), f"unknown option in README: {line}"
            checked.add(name)
        for target in re.findall(r"(?:^|\s)make ([a-z][\w-]*)", line):
            assert target in targets, f"README runs `make {target}`, which the Makefile does not have: {line}"
    assert checked >= {"serve", "migrate", "create-project", "create-api-key", "set-stripe", "sync-stripe"}, checked


def test_every_test_variable_is_documented():
    import re

    root = README_PATH.parent
    sources = [p.read_text() for p in (root / "tests").glob("*.py")] + [(root / ".ci" / "run").read_text()]
    used = set(re.findall(r"PULSE_TEST_[A-Z_]+", "\n".join(sources)))
    table = {line.split("`")[1] for line in README.splitlines() if line.startswith("| `PULSE_TEST_")}
    assert used and used == table, (sorted(used - table), sorted(table - used))


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ci_recipe(port, database_url, timeout=120):
    import os
    import subprocess

    script = README.split("<!-- ci-recipe -->\n```sh\n", 1)[1].split("```", 1)[0]
    env = dict(
        os.environ,
        PORT=str(port),
        PULSE_DATABASE_URL=database_url,
        PULSE_STRIPE_API_BASE="http://127.0.0.1:9",
    )  # any real-Stripe call would fail: none is made
    return subprocess.run(
        ["bash", "-c", script],
        cwd=README_PATH.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_ci_recipe_runs_offline(tmp_path):
    """README "Testing your integration in CI": the script, as written, on a free port and a fresh database."""
    done = _run_ci_recipe(_free_port(), f"sqlite:///{tmp_path / 'ci.db'}")
    assert done.returncode == 0 and "CI scenario passed" in done.stdout, done.stderr[-3000:]


def test_the_ci_recipe_refuses_a_port_another_server_answers_on(tmp_path):
    """QA #6: with another server on PORT the recipe must stop, not test that server (401s, a JSON traceback)."""
    import http.server
    import threading

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/api/health"
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}' if ok else b'{"error": {"status": 401, "code": "unauthorized"}}')

        do_POST = do_GET

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        done = _run_ci_recipe(other.server_address[1], f"sqlite:///{tmp_path / 'ci.db'}", timeout=60)
    finally:
        other.shutdown()
        other.server_close()
    assert done.returncode != 0 and "CI scenario passed" not in done.stdout
    assert "in use" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_the_ci_recipe_stops_when_its_server_dies(tmp_path):
    """QA #6: a server that exits at start (here: its database directory is missing) ends the wait loop."""
    done = _run_ci_recipe(_free_port(), f"sqlite:///{tmp_path / 'missing' / 'ci.db'}", timeout=60)
    assert done.returncode != 0 and "the server exited" in done.stderr, done.stderr[-3000:]
    assert "mkdir -p" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


def test_the_ci_recipe_prints_an_api_error_and_fails():
    """QA #6: `call` shows the error body of a 4xx instead of hiding it (curl -sf) and feeding "" on."""
    import subprocess

    script = README.split("<!-- ci-recipe -->\n```sh\n", 1)[1].split("```", 1)[0]
    helpers = script[script.index("json() {") : script.index("expect() {")]
    helpers = "\n".join(line for line in helpers.splitlines() if not line.startswith(("PROJECT=", "KEY=")))
    fake_curl = 'curl() { printf \'%s\\n%s\' \'{"error": {"status": 401, "code": "unauthorized"}}\' 401; }\n'
    body = (
        "set -euo pipefail\nBASE=http://x KEY=k\n"
        + fake_curl
        + helpers
        + "\nS=$(call GET /api/x '' '[\"status\"]')\necho reached"
    )
    done = subprocess.run(
        ["bash", "-c", body], cwd=README_PATH.parent, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode != 0 and "reached" not in done.stdout, (done.stdout, done.stderr)
    assert "HTTP 401" in done.stderr and "unauthorized" in done.stderr and "Traceback" not in done.stderr, done.stderr
