"""Processes, seeding and load generation for the benchmark: the service, the yardstick, fake Stripe, wrk."""

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench")
SECRET = "bench-secret-key-0123456789abcdef"
WEBHOOK_SECRET = "whsec_bench0123456789abcdef"
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
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


# ---------------------------------------------------------------- databases


def mysql_fresh(server_url):
    """Create a fresh database on the MySQL server of `server_url`; returns (url, drop function), or None."""
    import pymysql

    parts = urlsplit(server_url)
    server = dict(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
    )
    try:
        conn = pymysql.connect(**server, autocommit=True, connect_timeout=3)
    except pymysql.MySQLError as exc:
        log.warning("MySQL at %s:%s unreachable (%s): MySQL runs skipped", server["host"], server["port"], exc)
        return None
    name = f"pulse_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")

    def drop():
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()

    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, "")), drop


def sqlite_fresh():
    directory = tempfile.mkdtemp(prefix="pulse-bench-")
    return f"sqlite:///{directory}/pulse.db", lambda: shutil.rmtree(directory, ignore_errors=True)


def seed_customers(database_url, project_public_id, count, prefix, with_subscription=True, batch=2000):
    """Insert `count` customers (each with an active subscription) straight into the database."""
    from pulse import db
    from pulse.models import Customer, Project, Subscription

    db.bind(database_url)
    now = db.utcnow()
    with db.block() as conn:
        project = Project.get(Project.public_id == project_public_id)
        for start in range(0, count, batch):
            ids = range(start, min(start + batch, count))
            with conn.atomic():
                Customer.insert_many(
                    [
                        dict(
                            project=project.id,
                            external_user_id=f"{prefix}{i}",
                            email=f"{prefix}{i}@example.com",
                            stripe_customer_id=f"cus_{prefix}{i}",
                            created_at=now,
                            updated_at=now,
                        )
                        for i in ids
                    ]
                ).execute()
                if not with_subscription:
                    continue
                rows = (
                    Customer.select(Customer.id, Customer.external_user_id)
                    .where(
                        (Customer.project == project.id)
                        & (Customer.external_user_id.in_([f"{prefix}{i}" for i in ids]))
                    )
                    .tuples()
                )
                Subscription.insert_many(
                    [
                        dict(
                            project=project.id,
                            customer=cid,
                            stripe_subscription_id=f"sub_{ext}",
                            plan_slug="pro",
                            stripe_price_id="price_bench_pro",
                            interval="monthly",
                            stripe_status="active",
                            status="active",
                            current_period_end=now + timedelta(days=30),
                            started_at=now,
                            snapshot_at=0,
                            synced_at=now,
                            created_at=now,
                            updated_at=now,
                        )
                        for cid, ext in rows
                    ]
                ).execute()
    db.database.close()


def applied(database_url, project_public_id, acknowledged, deliveries, started, timeout=120.0):
    """Wait until every acknowledged event id is stored as applied; counts and the end-to-end rate.

    `applied_per_s` divides the deliveries (duplicates included) by the time from the first POST
    until the last event was applied (the same as the acknowledgement time when events are applied before the answer).
    """
    from pulse import db
    from pulse.models import Project, WebhookEvent

    db.bind(database_url)
    ids = sorted(acknowledged)
    deadline = time.monotonic() + timeout
    while True:
        with db.block():
            project = Project.get(Project.public_id == project_public_id)
            outcomes = {}
            for start in range(0, len(ids), 500):
                query = (
                    WebhookEvent.select(WebhookEvent.outcome, peewee_count())
                    .where(
                        WebhookEvent.project == project.id, WebhookEvent.stripe_event_id.in_(ids[start : start + 500])
                    )
                    .group_by(WebhookEvent.outcome)
                    .tuples()
                )
                for outcome, count in query:
                    outcomes[str(outcome)] = outcomes.get(str(outcome), 0) + count
        done = outcomes.get("processed", 0) + outcomes.get("ignored", 0) + outcomes.get("failed", 0)
        if done >= len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    db.database.close()
    return {
        "acknowledged_distinct": len(ids),
        "outcomes": outcomes,
        "all_applied": outcomes.get("processed", 0) == len(ids),
        "applied_s": round(elapsed, 2),
        "applied_per_s": round(deliveries / elapsed, 1),
    }


def customer_count(database_url, project_public_id):
    """How many customers the project has now (checkouts add some): the rows its export must hold."""
    from pulse import db
    from pulse.models import Customer, Project

    db.bind(database_url)
    with db.block():
        count = Customer.select().join(Project).where(Project.public_id == project_public_id).count()
    db.database.close()
    return count


def peewee_count():
    import peewee

    return peewee.fn.COUNT(peewee.SQL("*"))


# ---------------------------------------------------------------- load generation


def _ms(text):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * UNITS[unit]


def parse_wrk(output):
    """Requests/s, p50/p90/p99 (ms), request count and errors from `wrk --latency` output."""
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", output, re.M):
        result[f"p{pct}_ms"] = round(_ms(value), 3)
    result["requests"] = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["errors"] = sum(map(int, errors.groups())) if errors else 0
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def _lua(headers):
    lines = [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    fd, path = tempfile.mkstemp(suffix=".lua")
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _lua_paths(headers, paths_file, offset=0):
    """A wrk script that sets `headers` and requests the paths of `paths_file` in turn, from line `offset`."""
    lines = [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    lines += [
        "local paths = {}",
        f'for line in io.lines("{paths_file}") do paths[#paths + 1] = line end',
        f"local i = {offset} % #paths",
        "request = function()",
        "  i = i + 1",
        "  if i > #paths then i = 1 end",
        '  return wrk.format("GET", paths[i])',
        "end",
    ]
    fd, path = tempfile.mkstemp(suffix=".lua")
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def wrk_start(url, headers=None, duration=5.0, connections=16, threads=1, paths_file=None, offset=0):
    """Start wrk (or, without it, bench.loadgen) in the background; finish with wrk_result().

    With `paths_file`, wrk requests its paths in turn on the host of `url` (the fallback cannot).
    """
    if not have_wrk():
        argv = [
            sys.executable,
            "-m",
            "bench.loadgen",
            url,
            "--duration",
            str(duration),
            "--connections",
            str(connections),
        ]
        argv += [arg for name, value in (headers or {}).items() for arg in ("--header", f"{name}: {value}")]
        return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    script = _lua_paths(headers or {}, paths_file, offset) if paths_file else _lua(headers or {})
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        script,
        url,
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wrk_result(proc, stop=False):
    """Wait for (or interrupt, when `stop`) a wrk run and parse what it printed."""
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode(errors="replace")
    if not have_wrk():
        return json.loads(output)
    try:
        result = parse_wrk(output)
        result["p99_ms"]
        return result
    except (AttributeError, ValueError, KeyError):
        raise RuntimeError("could not parse wrk output:\n" + output) from None


def wrk(url, headers=None, duration=5.0, connections=16, threads=1, paths_file=None, offset=0):
    return wrk_result(wrk_start(url, headers, duration, connections, threads, paths_file, offset))


# ---------------------------------------------------------------- user popularity and the open-loop probe


def zipf_users(users, count, exponent=1.0, seed=14):
    """`count` user indices in [0, users) drawn with Zipf-like popularity (rank r weighs 1 / r**exponent)."""
    import bisect
    import random

    total, cumulative = 0.0, []
    for rank in range(1, users + 1):
        total += 1.0 / rank**exponent
        cumulative.append(total)
    rng = random.Random(seed)
    return [min(users - 1, bisect.bisect_left(cumulative, rng.random() * total)) for _ in range(count)]


def random_users(users, count, seed=15):
    import random

    rng = random.Random(seed)
    return [rng.randrange(users) for _ in range(count)]


def paths_file(indices, prefix):
    """A file of GET /api/subscription paths, one per line, for wrk scripts and the probe."""
    fd, path = tempfile.mkstemp(suffix=".paths")
    with os.fdopen(fd, "w") as handle:
        handle.writelines(f"/api/subscription?external_user_id={prefix}{i}\n" for i in indices)
    return path


def probe_start(base, paths, headers, rate=200.0, duration=600.0):
    """Start bench.probe (open loop at `rate` req/s) in the background; finish with probe_result()."""
    argv = [
        sys.executable,
        "-m",
        "bench.probe",
        base,
        "--paths",
        paths,
        "--rate",
        str(rate),
        "--duration",
        str(duration),
    ]
    argv += [arg for name, value in (headers or {}).items() for arg in ("--header", f"{name}: {value}")]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.3)  # let it import and connect before the work it measures starts
    return proc


def probe_result(proc, stop=False):
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    try:
        return json.loads(out)
    except ValueError:
        raise RuntimeError("probe failed:\n" + err.decode(errors="replace")[-2000:]) from None


def probe(base, paths, headers, rate=200.0, duration=3.0):
    return probe_result(probe_start(base, paths, headers, rate, duration))


_STATS = re.compile(r"hot-path cache: report=(\d+) hits=(\d+) misses=(\d+) entries=(\d+)")


def cache_stats(service):
    """{"hits", "misses", "entries"} of the service's hot-path cache (logged on SIGUSR1), or None."""
    service.reports = getattr(service, "reports", 0) + 1
    os.kill(service.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for report, hits, misses, entries in reversed(_STATS.findall(service.tail(200_000))):
            if int(report) == service.reports:
                return {"hits": int(hits), "misses": int(misses), "entries": int(entries)}
        time.sleep(0.05)
    log.warning("the service did not report its hot-path cache counters")
    return None


def hit_rate(before, after):
    """Share of hot-path answers served from the cache between two cache_stats() readings."""
    if not before or not after:
        return None
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    return round(hits / (hits + misses), 3) if hits + misses else None


def have_wrk():
    return shutil.which("wrk") is not None


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
