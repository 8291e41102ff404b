"""The real server (`run.py serve`) in a subprocess, on a free loopback port, with its logs captured."""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "live-server-secret-key-0123456789"


class LiveServer:
    """Start `run.py serve --port 0`; `.port`, `.logs` (stderr lines), `.stop()`, `.kill()`."""

    def __init__(self, database_url, env=None, limits=None, processes=1):
        self.database_url = database_url
        self.env = dict(os.environ)
        self.env.update(
            {
                "PULSE_DATABASE_URL": database_url,
                "PULSE_SECRET_KEY": TEST_SECRET,
                "PULSE_LOG_LEVEL": "info",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env.update(env or {})
        self.limits = limits or {}
        self.processes = processes
        self.logs = []
        self.proc = None
        self.port = None

    def start(self, timeout=30):
        argv = ["serve", "--host", "127.0.0.1", "--port", "0", "--processes", str(self.processes)]
        code = (
            f"import sys, run, server; server.HTTP_SERVER_LIMITS.update({self.limits!r}); sys.exit(run.main({argv!r}))"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.logs.append(line.rstrip("\n"))
                if self.port is None and "serving on http://" in line:
                    self.port = int(json.loads(line)["msg"].split("http://", 1)[1].split(":")[1].split()[0])
                    started.set()
            started.set()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        if not started.wait(timeout) or self.port is None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "\n".join(self.logs[-30:]))
        return self

    def cli(self, *args):
        """Run `run.py ARGS --json` against the same database -> the parsed JSON output."""
        done = subprocess.run(
            [sys.executable, "run.py", *args, "--json"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"run.py {args[0]} failed: {done.stderr}")
        self.logs.extend(done.stderr.splitlines())
        return json.loads(done.stdout)

    def create_project(self, name="Acme", **options):
        """A project through the CLI: {"project_id", "api_key", "admin_email", ...}."""
        args = ["create-project", name, "--admin-email", options.pop("admin_email", f"admin@{name.lower()}.test")]
        for option, value in options.items():
            args += ["--" + option.replace("_", "-"), value]
        return self.cli(*args)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def request(self, method, path, body=None, headers=None, timeout=10):
        """One request on a fresh connection -> (status, headers dict, body bytes)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def healthy(self):
        status, _, body = self.request("GET", "/api/health")
        return status == 200 and json.loads(body)["status"] == "ok"

    def stop(self, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipes()

    def kill(self):
        """SIGKILL: no drain, no cleanup, like a crash or the OOM killer."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self):
        if self.proc and self.proc.stderr:
            self._drain.join(5)  # EOF once the process (and its workers) are gone
            try:
                self.proc.stderr.close()
            except (OSError, ValueError):
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
