"""Processes for the benchmark: the service, the worker, the yardstick, fake Stripe; their memory."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench")
SECRET = "bench-secret-key-0123456789abcdef"
WEBHOOK_SECRET = "whsec_bench0123456789abcdef"
# With --pin: the CPUs of the service and the yardstick; everything else (the benchmark itself, wrk,
# the probe, fake Stripe, the inbox worker) stays on the CPUs the benchmark process was given.
SERVICE_CPUS = None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url, timeout=30.0, proc=None):
    """Poll `url` until it answers (any status), or fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class Process:
    """A child process we started, stopped with SIGTERM (then SIGKILL) by its own pid only."""

    def __init__(self, argv, env=None, stdout=None, cpus=None):
        self.log_file = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=stdout or self.log_file,
            stderr=self.log_file,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.pid = self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()

    def tail(self, size=2000):
        self.log_file.seek(0)
        return self.log_file.read()[-size:].decode(errors="replace")


class FakeStripeProcess(Process):
    """The tests' fake Stripe in its own process: `.url`, and `.set_latency(seconds)`."""

    def __init__(self, latency):
        super().__init__([sys.executable, "-m", "bench.stripe_server", str(latency)], stdout=subprocess.PIPE)
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2:
            raise RuntimeError("fake Stripe did not start: " + self.tail())
        self.url, self.control = line

    def set_latency(self, seconds):
        urllib.request.urlopen(f"{self.control}/latency?seconds={seconds}", timeout=5).read()

    def add_customers(self, prefix, count):
        urllib.request.urlopen(f"{self.control}/customers?prefix={prefix}&count={count}", timeout=30).read()


def start_bare(body):
    """The bare Tornado yardstick answering `body`; returns (Process, base url)."""
    fd, path = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "wb") as handle:
        handle.write(body)
    port = free_port()
    child = Process([sys.executable, "-m", "bench.bare", str(port), path], cpus=SERVICE_CPUS)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/", proc=child.proc)
    return child, base


def service_env(database_url, stripe_url, **extra):
    env = {
        "PULSE_DATABASE_URL": database_url,
        "PULSE_SECRET_KEY": SECRET,
        "PULSE_STRIPE_API_BASE": stripe_url,
        "PULSE_STRIPE_SECRET_KEY": "sk_test_bench",
        "PULSE_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PULSE_STRIPE_TIMEOUT": "10",
        # The benchmark measures the service, not the limiter's 429s (the limiter still runs).
        "PULSE_RATE_LIMIT_AUTHENTICATED": "100000000/minute",
        "PULSE_RATE_LIMIT_ANONYMOUS": "100000000/minute",
        "PULSE_LOG_LEVEL": "info",
    }
    env.update(extra)
    return env


def start_service(env, processes=1):
    """`python run.py serve` on a free port; returns (Process, base url)."""
    port = free_port()
    child = Process(
        [sys.executable, "run.py", "serve", "--port", str(port), "--processes", str(processes)],
        env=env,
        cpus=SERVICE_CPUS,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/api/health", timeout=60, proc=child.proc)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; its log ends:\n{child.tail()}") from None
    return child, base


def start_worker(env):
    """`python run.py worker` (applies stored webhook events); returns the Process."""
    child = Process([sys.executable, "run.py", "worker"], env=env)
    deadline = time.monotonic() + 60
    while "inbox worker started" not in child.tail():
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the inbox worker did not start:\n" + child.tail())
        time.sleep(0.1)
    return child


def wait_warm(service, timeout=180.0):
    """{"answers", "seconds"} once the service logged its read model warm-up, or None (none logged in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(r"read model warmed: (\d+) answers in ([\d.]+) s", service.tail(200_000))
        if found:
            return {"answers": int(found[-1][0]), "seconds": float(found[-1][1])}
        time.sleep(0.2)
    return None


def cli(env, *args):
    """Run a run.py command with --json and return its output object."""
    out = subprocess.run(
        [sys.executable, "run.py", *args, "--json"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout)


# ---------------------------------------------------------------- memory


def memory_kb(pid):
    """VmRSS and VmHWM (peak) of a process, in kB."""
    values = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, amount = line.split()[:2]
                values[name.rstrip(":")] = int(amount)
    return values


def reset_peak(pid):
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False when not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False
