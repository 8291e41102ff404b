"""Load for the benchmark: wrk runs, Zipf and random user mixes, the open-loop probe, cache counters."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from bench.harness import ROOT, log

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}

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
