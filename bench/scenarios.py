"""The four SPEC 6 scenarios; each returns a flat dict of figures for the table and results.json."""

import asyncio
import hashlib
import hmac
import json
import logging
import random
import statistics
import time

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from bench import harness, load

log = logging.getLogger("bench")
PREFIX = "bench-user-"
HOT_USER = PREFIX + "7"


def hot_url(base):
    return f"{base}/api/subscription?external_user_id={HOT_USER}"


def client():
    return AsyncHTTPClient(force_instance=True, max_clients=200, defaults={"request_timeout": 60})


# ---------------------------------------------------------------- 1. hot path vs bare Tornado

# Who asks: one user (every request a cache hit), Zipf-like popularity over every seeded user (a
# real app's page views), and uniformly random users (the worst case for any cache).
WORKLOADS = ("one", "zipf", "random")


def workload_paths(kind, prefix, users, count=300_000):
    if kind == "one":
        return load.paths_file([7], prefix)
    if kind == "zipf":
        return load.paths_file(load.zipf_users(users, count), prefix)
    return load.paths_file(load.random_users(users, count), prefix)


def hot_path(targets, bare_base, paths, rounds=3, duration=5.0, connections=50):
    """Per backend and workload, wrk runs of the service each paired with one of the bare handler; medians, ratios.

    `targets` maps a backend name to (service base URL, API key, service Process); `paths` maps
    a workload to its paths file. Each service run is paired with a bare run right before or
    after it (alternating), and its ratio is taken within the pair, so the drift of a shared
    machine cancels out; the reported ratio is the median of the pairs. Both sides get the same
    wrk settings and X-API-Key header; the bare handler answers every path with the same body.
    Each service run is bracketed by the service's cache counters, so its hit rate is reported beside it.
    """
    runs, pairs, offsets = {"bare": []}, {}, {}
    any_key = next(iter(targets.values()))[1]

    def measure(label, base, key, service, kind):
        before = load.cache_stats(service) if service else None
        # Each run goes on where the last one of its workload stopped: a replayed sequence would
        # find the answers its previous run left in memory.
        result = load.wrk(
            base + "/api/subscription",
            {"X-API-Key": key},
            duration,
            connections,
            paths_file=paths[kind],
            offset=offsets.get(label, 0),
        )
        offsets[label] = offsets.get(label, 0) + result["requests"]
        if service:
            result["hit_rate"] = load.hit_rate(before, load.cache_stats(service))
        if result["non_2xx"] or result["errors"]:
            log.warning("%s: %d non-2xx answers, %d socket errors", label, result["non_2xx"], result["errors"])
        return result

    for round_no in range(rounds):
        for name, (base, key, service) in targets.items():
            for kind in paths:
                label = (name, kind)
                order = [("bare", bare_base, any_key, None, kind), (label, base, key, service, kind)]
                if round_no % 2:
                    order.reverse()  # alternate who goes first so drift hurts both sides alike
                results = {who: measure(who, *rest) for who, *rest in order}
                bare, mine = results["bare"], results[label]
                runs["bare"].append(bare)
                pairs.setdefault(label, []).append((mine, bare))
                log.info(
                    "round %d %-14s %6.0f req/s vs bare %6.0f = %.2f  p99 %.1f ms  hit rate %s",
                    round_no + 1,
                    "/".join(label),
                    mine["rps"],
                    bare["rps"],
                    mine["rps"] / bare["rps"],
                    mine["p99_ms"],
                    mine.get("hit_rate"),
                )
    generator = "wrk -t1" if load.have_wrk() else "bench.loadgen"
    out = {
        "settings": f"{generator} -c{connections} -d{duration:g}s, {rounds} rounds of service/bare pairs, medians",
        "bare": _medians(runs["bare"]),
    }
    for (name, kind), results in pairs.items():
        row = _medians([mine for mine, _ in results])
        ratios = [round(mine["rps"] / bare["rps"], 3) for mine, bare in results]
        row["ratio"] = round(statistics.median(ratios), 3)
        row["ratio_per_round"] = ratios
        rates = [mine["hit_rate"] for mine, _ in results if mine.get("hit_rate") is not None]
        row["hit_rate"] = round(statistics.median(rates), 3) if rates else None
        row["hit_rate_per_round"] = [mine.get("hit_rate") for mine, _ in results]
        out.setdefault(name, {})[kind] = row
    return out


def _medians(results):
    row = {metric: round(statistics.median(r[metric] for r in results), 2) for metric in ("rps", "p50_ms", "p99_ms")}
    row["failed"] = sum(r["non_2xx"] + r["errors"] for r in results)
    return row


def probe_figures(idle, during):
    """The open-loop probe's idle and during figures, and the p99 ratio the targets judge."""
    return {
        "probe_rate": idle["rate"],
        "idle_p99_ms": idle["p99_ms"],
        "during_p99_ms": during["p99_ms"],
        "during_max_ms": during["max_ms"],
        "p99_ratio": round(during["p99_ms"] / idle["p99_ms"], 2),
        "during_answered": during["requests"],
        "during_sent": during["sent"],
        "during_failed": during["non_2xx"] + during["errors"],
    }


# ---------------------------------------------------------------- 2. checkouts against a slow Stripe


async def _checkout_batch(http, base, key, batch_no, count):
    async def one(i):
        body = {
            "external_user_id": f"bench-co-{batch_no}-{i}",
            "email": f"co{batch_no}-{i}@example.com",
            "plan_slug": "pro",
            "stripe_price_id": "price_bench_pro",
            "success_url": "https://app.example.com/ok",
            "cancel_url": "https://app.example.com/cancel",
        }
        response = await http.fetch(
            HTTPRequest(
                base + "/api/checkout",
                method="POST",
                body=json.dumps(body),
                headers={"X-API-Key": key, "Content-Type": "application/json"},
            ),
            raise_error=False,
        )
        return response.code

    started = time.monotonic()
    codes = await asyncio.gather(*(one(i) for i in range(count)))
    return time.monotonic() - started, codes


def checkouts(base, key, probe_paths, count=100, probe_seconds=4.0, rate=200.0):
    """100 concurrent checkouts with Stripe at 300 ms; open-loop hot-path p99 idle vs during back-to-back batches."""
    headers = {"X-API-Key": key}
    idle = load.probe(base, probe_paths, headers, rate, 3.0)

    async def run():
        http = client()
        try:
            # A production process is warm: stripe-python imports its services lazily on first use.
            await _checkout_batch(http, base, key, "warm", 1)
            first = await _checkout_batch(http, base, key, 0, count)  # alone: the wall-time figure
            probe = load.probe_start(base, probe_paths, headers, rate, probe_seconds)
            walls, batch_no = [], 1
            deadline = time.monotonic() + probe_seconds
            while time.monotonic() < deadline - 0.2:
                wall, codes = await _checkout_batch(http, base, key, batch_no, count)
                walls.append(wall)
                batch_no += 1
                if any(code != 200 for code in codes):
                    log.warning("checkout batch %d: statuses %s", batch_no, sorted(set(codes)))
            return first, walls, await asyncio.get_running_loop().run_in_executor(None, load.probe_result, probe)
        finally:
            http.close()

    (first_wall, first_codes), walls, during = asyncio.run(run())
    ok = sum(1 for code in first_codes if code == 200)
    return {
        "checkouts": count,
        "ok": ok,
        "statuses": sorted(set(first_codes)),
        "wall_s": round(first_wall, 3),
        "wall_s_under_probe_median": round(statistics.median(walls), 3) if walls else None,
        "batches_during_probe": len(walls),
        **probe_figures(idle, during),
    }


# ---------------------------------------------------------------- 3. export


def export(base, export_key, hot_key, pid, rows_expected, probe_paths, rate=200.0):
    """Stream the CSV export of `rows_expected` customers; rows/s, RSS growth, open-loop hot-path p99 during it."""
    headers = {"X-API-Key": hot_key}
    idle = load.probe(base, probe_paths, headers, rate, 3.0)
    harness.reset_peak(pid)
    before = harness.memory_kb(pid)
    samples = [before["VmRSS"]]
    counted = {"bytes": 0, "lines": 0}

    def on_chunk(chunk):
        counted["bytes"] += len(chunk)
        counted["lines"] += chunk.count(b"\n")

    async def run():
        http = client()
        probe = load.probe_start(base, probe_paths, headers, rate)

        async def sample():
            while True:
                samples.append(harness.memory_kb(pid)["VmRSS"])
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())
        started = time.monotonic()
        try:
            response = await http.fetch(
                HTTPRequest(
                    base + "/api/customers/export?format=csv",
                    headers={"X-API-Key": export_key},
                    streaming_callback=on_chunk,
                    request_timeout=600,
                ),
                raise_error=False,
            )
            elapsed = time.monotonic() - started
        finally:
            sampler.cancel()
            http.close()
        during = await asyncio.get_running_loop().run_in_executor(None, load.probe_result, probe, True)
        return response.code, elapsed, during

    code, elapsed, during = asyncio.run(run())
    after = harness.memory_kb(pid)
    rows = max(0, counted["lines"] - 1)
    peak = max(max(samples), after["VmHWM"])
    return {
        "status": code,
        "rows": rows,
        "rows_expected": rows_expected,
        "mb": round(counted["bytes"] / 1e6, 1),
        "seconds": round(elapsed, 2),
        "rows_per_s": round(rows / elapsed) if elapsed else None,
        "rss_before_mb": round(before["VmRSS"] / 1024, 1),
        "rss_peak_mb": round(peak / 1024, 1),
        "rss_growth_mb": round((peak - before["VmRSS"]) / 1024, 1),
        **probe_figures(idle, during),
    }


# ---------------------------------------------------------------- 4. webhooks


def sign(payload, secret, timestamp=None):
    """A Stripe-Signature header for `payload` (bytes), the way Stripe signs."""
    timestamp = int(timestamp or time.time())
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def webhook_events(project_id, customers_prefix, customers, count, duplicate_share=0.1):
    """`count` event bodies: customer.updated for seeded customers, `duplicate_share` of them repeats."""
    fresh = int(count * (1 - duplicate_share))
    bodies = []
    now = int(time.time())
    for i in range(fresh):
        n = i % customers
        event = {
            "id": f"evt_bench_{i:08d}",
            "object": "event",
            "api_version": "2025-03-31.basil",
            "created": now + i,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": "customer.updated",
            "data": {
                "object": {
                    "id": f"cus_{customers_prefix}{n}",
                    "object": "customer",
                    "email": f"{customers_prefix}{n}+{i}@example.com",
                    "created": now,
                    "livemode": False,
                    "metadata": {"pulse_project_id": project_id},
                }
            },
        }
        bodies.append(json.dumps(event).encode())
    rng = random.Random(6)
    for _ in range(count - fresh):
        bodies.insert(rng.randrange(len(bodies) // 10, len(bodies) + 1), rng.choice(bodies[: len(bodies) // 2 or 1]))
    return bodies


def webhooks(base, project_id, secret, bodies, probe_paths, hot_key, concurrency=16, rate=200.0):
    """POST signed events with `concurrency` in flight while the open-loop probe reads the hot path.

    Returns events/s, statuses, the ids answered 200 (`acknowledged`, for the caller to check they
    were applied) and the probe's figures.
    """
    path = f"{base}/api/webhook/{project_id}"
    headers = {"X-API-Key": hot_key}
    begun = []
    idle = load.probe(base, probe_paths, headers, rate, 3.0)

    async def run():
        http = client()
        queue = list(reversed(bodies))
        statuses, duplicates, acknowledged = {}, 0, set()

        async def worker():
            nonlocal duplicates
            while queue:
                body = queue.pop()
                response = await http.fetch(
                    HTTPRequest(
                        path,
                        method="POST",
                        body=body,
                        headers={"Content-Type": "application/json", "Stripe-Signature": sign(body, secret)},
                    ),
                    raise_error=False,
                )
                statuses[response.code] = statuses.get(response.code, 0) + 1
                if response.code == 200:
                    acknowledged.add(json.loads(body)["id"])
                    if b'"duplicate": true' in response.body.replace(b'":true', b'": true'):
                        duplicates += 1

        probe = load.probe_start(base, probe_paths, headers, rate)
        started = time.monotonic()
        begun.append(started)
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            http.close()
        elapsed = time.monotonic() - started
        during = await asyncio.get_running_loop().run_in_executor(None, load.probe_result, probe, True)
        return elapsed, statuses, duplicates, acknowledged, during

    elapsed, statuses, duplicates, acknowledged, during = asyncio.run(run())
    return {
        "events": len(bodies),
        "seconds": round(elapsed, 2),
        "events_per_s": round(len(bodies) / elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "duplicates_answered": duplicates,
        "concurrency": concurrency,
        "acknowledged": acknowledged,
        "started": begun[0],
        **probe_figures(idle, during),
    }
