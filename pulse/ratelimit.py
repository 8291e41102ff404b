"""Rate limits (SPEC 3.1): an exact sliding-window log, in process or shared through Redis.

`N/window` admits a request when fewer than N requests were admitted in the last `window`
seconds, so no 60 s window ever holds more than N, bursts included. Refused requests are not
logged: a client that keeps hammering gets through again as soon as old requests age out.
"""

import asyncio
import collections
import logging
import math
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("pulse.ratelimit")

# How long to stop trying Redis after it failed, so an outage costs one timeout, not one per request.
REDIS_RETRY_AFTER = 5.0
REDIS_TIMEOUT = 0.5


@dataclass(frozen=True)
class Decision:
    """The outcome of one `hit`: `reset` is the epoch second at which the next slot frees."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    retry_after: int  # seconds to wait when refused, else 0

    def headers(self):
        values = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining),
                  "X-RateLimit-Reset": str(self.reset)}
        if not self.allowed:
            values["Retry-After"] = str(self.retry_after)
        return values


def _decision(allowed, limit, count, oldest, window, now):
    """Build a Decision from the window's size after this hit and its oldest entry."""
    frees_at = (oldest if oldest is not None else now) + window
    return Decision(allowed=allowed, limit=limit, remaining=max(0, limit - count),
                    reset=math.ceil(frees_at), retry_after=0 if allowed else max(1, math.ceil(frees_at - now)))


class MemoryLimiter:
    """One process's counters: a deque of admission times per key."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self.logs = {}
        self.longest_window = 60
        self._next_sweep = 0.0

    async def hit(self, key, rate):
        return self.hit_now(key, rate)

    def hit_now(self, key, rate):
        now = self.clock()
        self.longest_window = max(self.longest_window, rate.window)
        self._sweep(now)
        entries = self.logs.setdefault(key, collections.deque())
        while entries and entries[0] <= now - rate.window:
            entries.popleft()
        allowed = len(entries) < rate.limit
        if allowed:
            entries.append(now)
        return _decision(allowed, rate.limit, len(entries), entries[0] if entries else None, rate.window, now)

    def _sweep(self, now):
        # Forget idle keys (one-off client IPs) so memory stays bounded by active clients.
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        for key in [k for k, v in self.logs.items() if not v or v[-1] <= now - self.longest_window]:
            del self.logs[key]

    async def close(self):
        self.logs.clear()


# KEYS[1] the window's sorted set; ARGV now (s), window (s), limit, unique member.
# Redis runs the script atomically, so concurrent processes never admit more than `limit`.
_SLIDING_LOG = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
local allowed = 0
if count < limit then
  redis.call('ZADD', key, now, ARGV[4])
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', key, math.ceil(window * 1000))
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {allowed, count, oldest[2] or ''}
"""


class RedisLimiter:
    """Counters shared by every process through Redis; falls back to `fallback` while Redis is down."""

    def __init__(self, url, prefix="pulse:rl:", fallback=None, clock=time.time):
        self.url, self.prefix, self.clock = url, prefix, clock
        self.fallback = fallback or MemoryLimiter(clock)
        self._client = None
        self._script = None
        self._down_until = 0.0

    def _connect(self):
        self._client = aioredis.Redis.from_url(self.url, socket_timeout=REDIS_TIMEOUT,
                                               socket_connect_timeout=REDIS_TIMEOUT)
        self._script = self._client.register_script(_SLIDING_LOG)

    async def hit(self, key, rate):
        if time.monotonic() < self._down_until:
            return self.fallback.hit_now(key, rate)
        if self._client is None:
            self._connect()
        now = self.clock()
        member = f"{now:.6f}:{secrets.token_hex(4)}"
        try:
            allowed, count, oldest = await self._script(keys=[self.prefix + key],
                                                        args=[f"{now:.6f}", rate.window, rate.limit, member])
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            # Fail open to per-process counting: an outage must not take the API down with it.
            log.warning("redis unavailable for rate limits (%s); counting per process for %ss",
                        type(exc).__name__, REDIS_RETRY_AFTER)
            self._down_until = time.monotonic() + REDIS_RETRY_AFTER
            return self.fallback.hit_now(key, rate)
        oldest = float(oldest) if oldest not in (b"", "", None) else None
        return _decision(bool(allowed), rate.limit, int(count), oldest, rate.window, now)

    async def close(self):
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def make_limiter(config, prefix="pulse:rl:"):
    """The limiter for `config`: Redis when PULSE_REDIS_URL is set, else in process."""
    if config.redis_url:
        return RedisLimiter(config.redis_url, prefix=prefix)
    return MemoryLimiter()
