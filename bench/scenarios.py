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

from bench import harness

log = logging.getLogger("bench")
HOT_USER = "bench-hot-user-7"


def hot_url(base):
    return f"{base}/api/subscription?external_user_id={HOT_USER}"


def client():
    return AsyncHTTPClient(force_instance=True, max_clients=200, defaults={"request_timeout": 60})


# ---------------------------------------------------------------- 1. hot path vs bare Tornado


def hot_path(targets, bare_base, rounds=3, duration=5.0, connections=16):
    """Alternate wrk runs over the bare handler and each backend's hot path; medians and ratios.

    `targets` maps a backend name to (service base URL, API key). Both sides get the same wrk
    settings and the same X-API-Key header.
    """
    runs = {"bare": []}
    runs.update({name: [] for name in targets})
    any_key = next(iter(targets.values()))[1]
    for round_no in range(rounds):
        order = [("bare", bare_base + "/api/subscription", any_key)]
        order += [(name, hot_url(base), key) for name, (base, key) in targets.items()]
        if round_no % 2:
            order.reverse()  # alternate who goes first so drift hurts both sides alike
        for name, url, key in order:
            result = harness.wrk(url, {"X-API-Key": key}, duration, connections)
            if result["non_2xx"] or result["errors"]:
                log.warning("%s: %d non-2xx answers, %d socket errors", name, result["non_2xx"], result["errors"])
            runs[name].append(result)
            log.info("round %d %-6s %8.0f req/s  p50 %.2f ms  p99 %.2f ms", round_no + 1, name,
                     result["rps"], result["p50_ms"], result["p99_ms"])
    generator = "wrk -t1" if harness.have_wrk() else "bench.loadgen"
    out = {"settings": f"{generator} -c{connections} -d{duration:g}s x {rounds} rounds, medians"}
    for name, results in runs.items():
        out[name] = {metric: round(statistics.median(r[metric] for r in results), 2)
                     for metric in ("rps", "p50_ms", "p99_ms")}
        out[name]["failed"] = sum(r["non_2xx"] + r["errors"] for r in results)
    for name in targets:
        # The ratio of medians, and each round's own ratio (bare and service measured back to back).
        out[name]["ratio"] = round(out[name]["rps"] / out["bare"]["rps"], 3)
        out[name]["ratio_per_round"] = [round(s["rps"] / b["rps"], 3) for s, b in zip(runs[name], runs["bare"], strict=True)]
    return out


# ---------------------------------------------------------------- 2. checkouts against a slow Stripe


async def _checkout_batch(http, base, key, batch_no, count):
    async def one(i):
        body = {"external_user_id": f"bench-co-{batch_no}-{i}", "email": f"co{batch_no}-{i}@example.com",
                "plan_slug": "pro", "stripe_price_id": "price_bench_pro",
                "success_url": "https://app.example.com/ok", "cancel_url": "https://app.example.com/cancel"}
        response = await http.fetch(HTTPRequest(base + "/api/checkout", method="POST", body=json.dumps(body),
                                                headers={"X-API-Key": key, "Content-Type": "application/json"}),
                                    raise_error=False)
        return response.code

    started = time.monotonic()
    codes = await asyncio.gather(*(one(i) for i in range(count)))
    return time.monotonic() - started, codes


def checkouts(base, key, count=100, probe_seconds=4.0, probe_connections=4):
    """100 concurrent checkouts with Stripe at 300 ms; hot-path p99 idle vs during back-to-back batches."""
    headers = {"X-API-Key": key}
    idle = harness.wrk(hot_url(base), headers, probe_seconds, probe_connections)

    async def run():
        http = client()
        try:
            # A production process is warm: stripe-python imports its services lazily on first use.
            await _checkout_batch(http, base, key, "warm", 1)
            first = await _checkout_batch(http, base, key, 0, count)  # alone: the wall-time figure
            probe = harness.wrk_start(hot_url(base), headers, probe_seconds, probe_connections)
            walls, batch_no = [], 1
            deadline = time.monotonic() + probe_seconds
            while time.monotonic() < deadline - 0.2:
                wall, codes = await _checkout_batch(http, base, key, batch_no, count)
                walls.append(wall)
                batch_no += 1
                if any(code != 200 for code in codes):
                    log.warning("checkout batch %d: statuses %s", batch_no, sorted(set(codes)))
            return first, walls, await asyncio.get_running_loop().run_in_executor(None, harness.wrk_result, probe)
        finally:
            http.close()

    (first_wall, first_codes), walls, during = asyncio.run(run())
    ok = sum(1 for code in first_codes if code == 200)
    return {"checkouts": count, "ok": ok, "statuses": sorted(set(first_codes)),
            "wall_s": round(first_wall, 3), "wall_s_under_probe_median": round(statistics.median(walls), 3) if walls else None,
            "idle_p99_ms": idle["p99_ms"], "during_p99_ms": during["p99_ms"],
            "p99_ratio": round(during["p99_ms"] / idle["p99_ms"], 2),
            "idle_rps": idle["rps"], "during_rps": during["rps"], "batches_during_probe": len(walls)}


# ---------------------------------------------------------------- 3. export


def export(base, export_key, hot_key, pid, rows_expected):
    """Stream the CSV export of `rows_expected` customers; rows/s, RSS growth, hot-path p99 during it."""
    headers = {"X-API-Key": hot_key}
    idle = harness.wrk(hot_url(base), headers, 3.0, 4)
    harness.reset_peak(pid)
    before = harness.memory_kb(pid)
    samples = [before["VmRSS"]]
    counted = {"bytes": 0, "lines": 0}

    def on_chunk(chunk):
        counted["bytes"] += len(chunk)
        counted["lines"] += chunk.count(b"\n")

    async def run():
        http = client()
        probe = harness.wrk_start(hot_url(base), headers, 600, 4)

        async def sample():
            while True:
                samples.append(harness.memory_kb(pid)["VmRSS"])
                await asyncio.sleep(0.05)

        sampler = asyncio.ensure_future(sample())
        started = time.monotonic()
        try:
            response = await http.fetch(HTTPRequest(base + "/api/customers/export?format=csv",
                                                    headers={"X-API-Key": export_key}, streaming_callback=on_chunk,
                                                    request_timeout=600), raise_error=False)
            elapsed = time.monotonic() - started
        finally:
            sampler.cancel()
            http.close()
        during = await asyncio.get_running_loop().run_in_executor(None, harness.wrk_result, probe, True)
        return response.code, elapsed, during

    code, elapsed, during = asyncio.run(run())
    after = harness.memory_kb(pid)
    rows = max(0, counted["lines"] - 1)
    peak = max(max(samples), after["VmHWM"])
    return {"status": code, "rows": rows, "rows_expected": rows_expected, "mb": round(counted["bytes"] / 1e6, 1),
            "seconds": round(elapsed, 2), "rows_per_s": round(rows / elapsed) if elapsed else None,
            "rss_before_mb": round(before["VmRSS"] / 1024, 1), "rss_peak_mb": round(peak / 1024, 1),
            "rss_growth_mb": round((peak - before["VmRSS"]) / 1024, 1),
            "idle_p99_ms": idle["p99_ms"], "during_p99_ms": during["p99_ms"], "during_requests": during["requests"],
            "during_non_2xx": during["non_2xx"] + during["errors"]}


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
        event = {"id": f"evt_bench_{i:08d}", "object": "event", "api_version": "2025-03-31.basil", "created": now + i,
                 "livemode": False, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
                 "type": "customer.updated",
                 "data": {"object": {"id": f"cus_{customers_prefix}{n}", "object": "customer",
                                     "email": f"{customers_prefix}{n}+{i}@example.com", "created": now,
                                     "livemode": False, "metadata": {"pulse_project_id": project_id}}}}
        bodies.append(json.dumps(event).encode())
    rng = random.Random(6)
    for _ in range(count - fresh):
        bodies.insert(rng.randrange(len(bodies) // 10, len(bodies) + 1), rng.choice(bodies[:len(bodies) // 2 or 1]))
    return bodies


def webhooks(base, project_id, secret, bodies, concurrency=16):
    """POST signed events with `concurrency` in flight; events/s and outcome counts."""
    path = f"{base}/api/webhook/{project_id}"

    async def run():
        http = client()
        queue = list(reversed(bodies))
        statuses, duplicates = {}, 0

        async def worker():
            nonlocal duplicates
            while queue:
                body = queue.pop()
                response = await http.fetch(HTTPRequest(path, method="POST", body=body, headers={
                    "Content-Type": "application/json", "Stripe-Signature": sign(body, secret)}), raise_error=False)
                statuses[response.code] = statuses.get(response.code, 0) + 1
                if response.code == 200 and b'"duplicate": true' in response.body.replace(b'":true', b'": true'):
                    duplicates += 1

        started = time.monotonic()
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            http.close()
        return time.monotonic() - started, statuses, duplicates

    elapsed, statuses, duplicates = asyncio.run(run())
    return {"events": len(bodies), "seconds": round(elapsed, 2), "events_per_s": round(len(bodies) / elapsed, 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "duplicates_answered": duplicates,
            "concurrency": concurrency}
