"""Fallback load generator when `wrk` is missing: keep-alive GETs over N connections, JSON result on stdout.

`python -m bench.loadgen URL --duration S --connections N --header "Name: value"`; SIGINT stops early.
It is Python, so it saturates sooner than wrk: results say which generator produced them.
"""

import argparse
import asyncio
import json
import signal
import time
from urllib.parse import urlsplit


async def connection(host, port, request, deadline, latencies, counts, stop):
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
        while time.monotonic() < deadline and not stop.is_set():
            started = time.monotonic()
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
            latencies.append(time.monotonic() - started)
            counts["non_2xx"] += not 200 <= status < 400
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        counts["errors"] += 1
    finally:
        if writer is not None:
            writer.close()


async def run(url, duration, connections, headers):
    parts = urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"] + headers
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    latencies, counts, stop = [], {"non_2xx": 0, "errors": 0}, asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    started = time.monotonic()
    await asyncio.gather(
        *(
            connection(parts.hostname, parts.port or 80, request, started + duration, latencies, counts, stop)
            for _ in range(connections)
        )
    )
    elapsed = time.monotonic() - started
    latencies.sort()

    def pct(p):
        return round(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1000, 3) if latencies else 0.0

    return {
        "rps": round(len(latencies) / elapsed, 2),
        "p50_ms": pct(50),
        "p75_ms": pct(75),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "requests": len(latencies),
        **counts,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.duration, args.connections, args.header))))


if __name__ == "__main__":
    main()
