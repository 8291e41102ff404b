"""Rate limits (SPEC 3.1): the `limits` package's moving window, in process or shared through Redis.

`N/window` admits a request when fewer than N requests were admitted in the last `window`
seconds, so no window ever holds more than N, bursts included. Refused requests are not
counted: a client that keeps hammering gets through again as soon as old requests age out.
Redis is reached with redis-py's asyncio client (never blocking the event loop), bounded by
REDIS_TIMEOUT; while it is down every process counts on its own (fail open).
"""

import ipaddress
import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter as SyncMovingWindowRateLimiter
from redis.exceptions import RedisError

from pulse.config import Config, RateLimit

log = logging.getLogger("pulse.ratelimit")

# How long to stop trying Redis after it failed, so an outage costs one timeout, not one per request.
REDIS_RETRY_AFTER = 5.0
REDIS_TIMEOUT = 0.5
# IPv6 clients get a /64 each (one subnet, RFC 6177); counting /128s would give one host 2**64 budgets.
IPV6_BUCKET_PREFIX = 64


def address_bucket(ip: str | None) -> str:
    """The per-address key of `ip`: an IPv4 address as is, an IPv6 one as its /64 network.

    "203.0.113.7" -> "203.0.113.7"; "2001:db8:1:2:aa::1" -> "2001:db8:1:2::/64";
    "::ffff:203.0.113.7" -> "203.0.113.7"; anything unparseable is returned unchanged.
    Used by every per-address limit: anonymous API requests, webhook forgeries, console sign-in.
    """
    try:
        address = ipaddress.ip_address((ip or "").strip())
    except ValueError:
        return ip or ""
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_BUCKET_PREFIX}", strict=False))
    return str(address)


@dataclass(frozen=True)
class Decision:
    """The outcome of one `hit`: `reset` is the epoch second at which the next slot frees."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int  # seconds to wait when refused, else 0

    def headers(self) -> dict[str, str]:
        """The X-RateLimit-Limit/-Remaining/-Reset headers, plus Retry-After (seconds) when refused."""
        values = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            values["Retry-After"] = str(self.retry_after)
        return values


def _item(rate: RateLimit) -> RateLimitItemPerSecond:
    """The `limits` item for a config RateLimit (`limit` per `window` seconds)."""
    return RateLimitItemPerSecond(rate.limit, rate.window)


def _decision(rate: RateLimit, allowed: bool, frees_at: float, remaining: int) -> Decision:
    now = time.time()
    if remaining >= rate.limit:  # nothing in the window (cannot follow an admitted hit)
        frees_at = now + rate.window
    return Decision(
        allowed=allowed,
        limit=rate.limit,
        remaining=max(0, remaining),
        reset=math.ceil(frees_at),
        retry_after=0 if allowed else max(1, math.ceil(frees_at - now)),
    )


class Limiter:
    """A moving-window limiter: `hit(key, rate)` counts a request and answers a Decision."""

    async def hit(self, key: str, rate: RateLimit) -> Decision:
        """Count one request against `key` at `rate` -> Decision."""
        raise NotImplementedError

    async def close(self) -> None:
        """Drop the counters and release the storage (shutdown, tests)."""


class MemoryLimiter(Limiter):
    """One process's counters, in `limits`' synchronous memory storage (microseconds, no await).

    Not `limits.aio`'s MemoryStorage: its sweep holds a key's asyncio lock while it waits for a
    thread of the loop's default executor, so under load (100 checkouts resolving Stripe's host
    there) every request of that API key waited behind the queue: p99 1.3 s (docs/performance.md).
    """

    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self.strategy = SyncMovingWindowRateLimiter(self.storage)

    async def hit(self, key: str, rate: RateLimit) -> Decision:
        """Count one request against `key` at `rate` -> Decision."""
        item = _item(rate)
        allowed = self.strategy.hit(item, key)
        frees_at, remaining = self.strategy.get_window_stats(item, key)
        return _decision(rate, allowed, frees_at, remaining)

    async def close(self) -> None:
        """Drop the counters (shutdown, tests)."""
        self.storage.reset()


class RedisLimiter(Limiter):
    """Counters shared by every process through Redis; falls back to `fallback` while Redis is down."""

    storage: RedisStorage

    def __init__(self, url: str, prefix: str = "pulse:rl", fallback: Limiter | None = None) -> None:
        # limits names the schemes async+redis://, async+rediss://, async+redis+unix://.
        uri = "async+redis+" + url if url.startswith("unix://") else "async+" + url
        storage = RedisStorage(
            uri,
            implementation="redispy",
            key_prefix=prefix,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )
        self.storage = storage
        self.strategy = MovingWindowRateLimiter(storage)
        self.fallback = fallback or MemoryLimiter()
        self._down_until = 0.0

    async def hit(self, key: str, rate: RateLimit) -> Decision:
        if time.monotonic() < self._down_until:
            return await self.fallback.hit(key, rate)
        try:
            item = _item(rate)
            allowed = await self.strategy.hit(item, key)
            # A second round trip: `limits` reports the window (oldest entry, count) separately.
            frees_at, remaining = await self.strategy.get_window_stats(item, key)
            return _decision(rate, allowed, frees_at, remaining)
        except (TimeoutError, RedisError, OSError) as exc:
            # Fail open to per-process counting: an outage must not take the API down with it.
            log.warning(
                "redis unavailable for rate limits (%s); counting per process for %ss",
                type(exc).__name__,
                REDIS_RETRY_AFTER,
            )
            self._down_until = time.monotonic() + REDIS_RETRY_AFTER
            return await self.fallback.hit(key, rate)

    async def close(self) -> None:
        await self.fallback.close()
        # A redis.asyncio.Redis (implementation="redispy"); limits types the bridge and client more loosely.
        await self.storage.bridge.get_connection().aclose()  # type: ignore[attr-defined]


def make_limiter(config: Config, prefix: str = "pulse:rl") -> Limiter:
    """The limiter for `config`: Redis when PULSE_REDIS_URL is set, else in process."""
    if config.redis_url:
        return RedisLimiter(config.redis_url, prefix=prefix)
    return MemoryLimiter()
