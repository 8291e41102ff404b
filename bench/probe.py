"""Open-loop hot-path probe: GETs at a fixed rate whatever the answers' latency; JSON result on stdout.

`python -m bench.probe BASE --paths FILE --rate 200 --duration S --header "Name: value"`; SIGINT stops early.
Request i is due at start + i/rate and its latency is counted from then (not from when a connection
was free), so a stall of the server shows in the percentiles instead of slowing the probe down
(no coordinated omission). Keep-alive connections are reused; a new one opens when all are busy.
"""

import argparse
import asyncio
import json
import signal
import time
from urllib.parse import urlsplit

MAX_CONNECTIONS = 512


async def _get(host, port, idle, request):
    conn = idle.pop() if idle else await asyncio.open_connection(host, port)
    reader, writer = conn
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    idle.append(conn)
    return status


async def run(base, paths, rate, duration, headers):
    parts = urlsplit(base)
    host, port = parts.hostname, parts.port or 80
    requests = [
        ("\r\n".join([f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", *headers]) + "\r\n\r\n").encode()
        for path in paths
    ]
    latencies, counts, stop = [], {"non_2xx": 0, "errors": 0, "sent": 0}, asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    idle, inflight = [], set()

    async def one(due, request):
        try:
            status = await _get(host, port, idle, request)
            latencies.append(time.monotonic() - due)
            counts["non_2xx"] += not 200 <= status < 400
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            counts["errors"] += 1

    started = time.monotonic()
    i = 0
    while not stop.is_set():
        due = started + i / rate
        if due - started >= duration:
            break
        delay = due - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        if len(inflight) < MAX_CONNECTIONS:
            task = asyncio.ensure_future(one(due, requests[i % len(requests)]))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            counts["sent"] += 1
        else:
            counts["errors"] += 1  # the server is that far behind: count the request as failed
        i += 1
    if inflight:
        await asyncio.wait(inflight, timeout=30)
    elapsed = time.monotonic() - started
    for reader_writer in idle:
        reader_writer[1].close()
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000, 3) if latencies else 0.0

    return {
        "rate": rate,
        "rps": round(len(latencies) / elapsed, 2),
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(latencies[-1] * 1000, 3) if latencies else 0.0,
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        **counts,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--paths", required=True, help="file with one request path per line, used in turn")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    with open(args.paths) as handle:
        paths = [line.strip() for line in handle if line.strip()]
    print(json.dumps(asyncio.run(run(args.base, paths, args.rate, args.duration, args.header))))


if __name__ == "__main__":
    main()
