"""The outbox delivery loop: claims due deliveries under a lease (pulse.deliveries), signs (Standard Webhooks), sends.

Each serving process runs one `Deliverer` on its event loop. A delivery is claimed by a
conditional UPDATE in a short transaction (several processes never send one at once), sent with
no database connection held, then recorded. Only the oldest pending delivery of an (endpoint,
order key) is claimable, so one customer's messages arrive in order. A process killed mid-send
leaves its lease to expire: the delivery is sent again, with the same webhook-id. Between claims
the loop turns a bulk change's queued customers into messages, one batch a turn (pulse.fanout).

Timeouts use `asyncio.timeout`, not `asyncio.wait_for`: on Python 3.11 wait_for swallows a
cancellation that arrives as the awaited thing completes (CPython gh-86296), which once left
stop() waiting forever for a loop that went on polling (a send finishing at shutdown wakes it).
"""

import asyncio
import collections
import contextlib
import ipaddress
import logging
import secrets
import socket
import time
from datetime import UTC, datetime
from typing import Self, cast
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

from pulse import __version__, fanout
from pulse.config import Config
from pulse.db import DatabaseUnavailable, block
from pulse.deliveries import MAX_IN_FLIGHT_PER_ENDPOINT, Job, claim, purge, record
from pulse.endpoints import address_refusal
from pulse.models import WebhookDelivery
from pulse.outbox import PENDING, SUCCEEDED, WAKERS
from pulse.security import SecretBox

log = logging.getLogger("pulse.delivery")

MAX_IN_FLIGHT = 32
PURGE_EVERY_S = 3600
STOP_GRACE_S = 5.0  # stop() waits at most this long for the loop and the cancelled sends to end
USER_AGENT = f"PaymentPulse-Webhooks/{__version__}"


class Refused(Exception):
    """The target is not allowed (SSRF rule) or cannot be resolved."""


async def resolve(url: str, config: Config) -> tuple[str, str, str]:
    """(URL with the host replaced by a checked IP, Host header, TLS server name); raises Refused."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if host is None:  # check_url stores none such; getaddrinfo(None) would answer with this machine's addresses
        raise Refused("the URL has no host")
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise Refused(f"cannot resolve the host ({type(exc).__name__})") from None
        addresses = [str(info[4][0]) for info in infos]  # always str for AF_INET/AF_INET6
    if not addresses:
        raise Refused("the host has no address")
    for address in addresses:  # every address is checked: DNS may answer differently next time
        reason = address_refusal(address, config)
        if reason:
            raise Refused(f"refused: the host resolves to {reason}")
    ip = ipaddress.ip_address(addresses[0].split("%", 1)[0])
    netloc = f"[{ip}]" if ip.version == 6 else str(ip)
    pinned = urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return pinned, host_header, host


def signed_headers(msg_id: str, payload: str, secret: str) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt (timestamp = now)."""
    now = datetime.now(UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, payload),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


class Deliverer:
    """One process's delivery loop: `start()` on the running loop, `await stop()`."""

    def __init__(self, config: Config, box: SecretBox) -> None:
        self.config, self.box = config, box
        self.owner = f"{socket.gethostname()[:20]}-{secrets.token_hex(6)}"
        self.in_flight: dict[int, asyncio.Task[None]] = {}  # delivery id -> task
        self.endpoint_of: dict[int, int] = {}  # delivery id -> endpoint pk, of the sends in flight
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._db_down = False
        self._stopping = False

    def start(self) -> Self:
        """Open the HTTP client and start the loop on the running event loop; returns self."""
        loop = asyncio.get_running_loop()
        self._client = httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=httpx.Timeout(self.config.webhook_timeout)
        )
        WAKERS.append(self._waker)
        self._loop = loop
        self._task = loop.create_task(self._run())
        return self

    def _waker(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed
            pass

    async def stop(self) -> None:
        """End the loop and cancel the sends in flight (their leases are released); bounded by STOP_GRACE_S."""
        self._stopping = True  # the loop ends at its next turn even if a cancellation were lost
        if self._waker in WAKERS:
            WAKERS.remove(self._waker)
        self._wake.set()
        leased = list(self.in_flight)
        tasks = [task for task in (self._task, *self.in_flight.values()) if task is not None and not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            if stuck:  # never seen; a shutdown must not wait on it forever
                log.warning("outbox: %d task(s) still running %s s after stop; leaving them", len(stuck), STOP_GRACE_S)
        if leased:  # stopped mid-send: another process may take them now, not when the lease runs out
            try:
                with block():
                    WebhookDelivery.update(lease_until_ms=0).where(
                        WebhookDelivery.id.in_(leased),
                        WebhookDelivery.lease_owner == self.owner,
                        WebhookDelivery.status == PENDING,
                    ).execute()
            except DatabaseUnavailable:
                pass
        if self._client:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE_S):
                    await self._client.aclose()

    async def _run(self) -> None:
        purged_at = 0.0
        while not self._stopping:
            more = False
            try:
                if time.monotonic() - purged_at > PURGE_EVERY_S:
                    purged_at = time.monotonic()
                    with block():
                        purge()
                with block():  # a bulk change's announcements (pulse.fanout), one batch per turn
                    more = fanout.expand() >= fanout.BATCH
                self._claim_more()
                if self._db_down:
                    self._db_down = False
                    log.info("outbox: database back, delivering again")
            except DatabaseUnavailable:
                if not self._db_down:  # once per outage, not once per poll
                    self._db_down = True
                    log.warning("outbox: database unavailable, retrying every %s s", self.config.webhook_poll)
            except Exception as exc:  # keep the loop alive; the next poll tries again
                log.error("outbox claim failed: %s", type(exc).__name__)
            self._wake.clear()
            if more:  # the next batch once the loop has served what waits
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.webhook_poll):
                    await self._wake.wait()

    def _claim_more(self) -> None:
        for _ in range(3):  # again once an endpoint filled its share: the rows after its own are due too
            room = MAX_IN_FLIGHT - len(self.in_flight)
            if room <= 0:
                return
            busy = collections.Counter(self.endpoint_of.values())
            full = sum(count >= MAX_IN_FLIGHT_PER_ENDPOINT for count in busy.values())
            with block():
                jobs = claim(self.owner, room, self.config, exclude=set(self.in_flight), busy=busy)
            for job in jobs:
                task = asyncio.get_running_loop().create_task(self._deliver(job))
                self.in_flight[job["id"]] = task
                self.endpoint_of[job["id"]] = job["endpoint_pk"]
            if not jobs or sum(count >= MAX_IN_FLIGHT_PER_ENDPOINT for count in busy.values()) == full:
                return

    async def _deliver(self, job: Job) -> None:
        try:
            status_code, latency, error = await self.send(job)
            with block():
                outcome = record(job, self.owner, self.config, status_code, latency, error)
            if outcome != SUCCEEDED:
                log.info(
                    "webhook %s to endpoint %s: attempt %s failed (%s)",
                    job["public_id"],
                    job["endpoint_pk"],
                    job["attempts"],
                    error or status_code,
                )
        except Exception as exc:  # the lease expires and another attempt follows
            log.error("webhook %s delivery crashed: %s", job.get("public_id"), type(exc).__name__)
        finally:
            self.in_flight.pop(job["id"], None)
            self.endpoint_of.pop(job["id"], None)
            self._wake.set()  # the next message of this customer may be due now

    async def send(self, job: Job) -> tuple[int | None, int | None, str | None]:
        """One HTTP attempt -> (status code or None, latency ms, error text or None). Never raises for the network."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.webhook_timeout):
                return await self._attempt(job, started)
        except (TimeoutError, httpx.TimeoutException):
            return None, int((time.monotonic() - started) * 1000), "timed out"

    async def _attempt(self, job: Job, started: float) -> tuple[int | None, int | None, str | None]:
        try:
            pinned, host_header, server_name = await resolve(job["url"], self.config)
            secret = cast(str, self.box.decrypt(job["secret"]))  # NOT NULL: the token of a whsec_ secret
            headers = signed_headers(job["public_id"], job["payload"], secret)
            headers["host"] = host_header
            extensions = {"sni_hostname": server_name} if pinned.startswith("https") else {}
            # Streamed and closed unread: the endpoint's answer body is never downloaded. start() opened the client.
            async with cast(httpx.AsyncClient, self._client).stream(
                "POST", pinned, content=job["payload"].encode("utf-8"), headers=headers, extensions=extensions
            ) as response:
                pass
            latency = int((time.monotonic() - started) * 1000)
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
            if 300 <= response.status_code < 400:
                error = f"HTTP {response.status_code} (redirects are not followed)"
            return response.status_code, latency, error
        except Refused as exc:
            return None, None, str(exc)
        except httpx.TimeoutException:
            return None, int((time.monotonic() - started) * 1000), "timed out"
        except httpx.HTTPError as exc:
            return None, int((time.monotonic() - started) * 1000), f"connection failed ({type(exc).__name__})"
