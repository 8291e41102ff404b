"""The inbox worker (`run.py worker`): applies stored webhook events off the serving processes.

With PULSE_WEBHOOK_APPLY=worker a delivery is answered 200 once its event is durably in the inbox
(`webhooks.enqueue`), as Stripe recommends; this worker then applies it exactly as the inline path
does (`events.fetch` outside any transaction, `events.apply` in one transaction, the ownership and
newer-wins rules unchanged). Exactly once: the apply re-reads the row under a lock and skips it
unless it is still pending. A failure is recorded (`failed`, with the error, in the console) and
retried by this worker with exponential backoff (`backoff`: 4 s after the first failure, doubling
up to RETRY_MAX), and by Stripe's own retries, whichever comes first.
"""

import asyncio
import logging
import signal
import time
from collections.abc import Collection, Iterable, Sequence
from datetime import timedelta

import peewee

from pulse import events, projects, webhooks
from pulse import subscriptions as subs
from pulse.config import Config
from pulse.db import DatabaseUnavailable, block, locking, retryable, transaction, utcnow
from pulse.models import Project, WebhookEvent
from pulse.outcomes import Outcome
from pulse.security import SecretBox
from pulse.stripe_objects import CUSTOMER_EVENTS, JSON, customer_id_of, obj_of, stripe_id, subscription_id_of

log = logging.getLogger("pulse.inbox")

CONCURRENCY = 32  # events applied at once (each waits on Stripe for most of its time)
IDLE_POLL = 0.1  # seconds between looks at an empty inbox
RETRY_BASE = 2.0
RETRY_MAX = 3600.0
MAX_ATTEMPTS = 12  # then it stays failed: Stripe's retries and the console's re-apply remain
STOP_GRACE = 10.0


def backoff(attempts: int) -> float:
    """Seconds before retry number `attempts` (1 = the first retry)."""
    return min(RETRY_MAX, RETRY_BASE * 2 ** max(0, attempts - 1))


def due(limit: int, skip: Collection[int]) -> list[int]:
    """Ids of up to `limit` events to apply now: pending ones, and failed ones whose retry time has come."""
    now = utcnow()
    pending = WebhookEvent.outcome == Outcome.RECEIVED
    retry = (
        (WebhookEvent.outcome == Outcome.FAILED) & WebhookEvent.retry_at.is_null(False) & (WebhookEvent.retry_at <= now)
    )
    query = (
        WebhookEvent.select(WebhookEvent.id)
        .where((pending | retry) & WebhookEvent.payload.is_null(False))
        .order_by(WebhookEvent.id)
        .limit(limit + len(skip))
    )
    ids = [row_id for (row_id,) in query.tuples()]
    if ids:
        # Every stored event was received before now, so a re-read that starts after this query may
        # serve all of them: during a burst the backlog's events about one object share one read.
        newest = WebhookEvent.select(peewee.fn.MAX(WebhookEvent.id)).scalar() or 0
        _seen["id"] = max([_seen["id"], newest, *ids])
    return [row_id for row_id in ids if row_id not in skip][:limit]


async def apply_one(row_id: int, *, config: Config, box: SecretBox, row: WebhookEvent | None = None) -> None:
    """Apply inbox row `row_id` (`row`: it with its project, when already read) if still pending; never raises."""
    if row is None:
        with block():
            row = rows([row_id]).get(row_id)
    if row is None or row.outcome not in (Outcome.RECEIVED, Outcome.FAILED):
        return
    project = row.project if row.project_id else None
    event = webhooks.parse(row.payload.encode("utf-8"))
    try:
        fetched = {"at": subs.clock_ms()}
        if project is not None and event["type"] in events.HANDLED:
            fetched = await _fetch(row_id, project, event, config, box)
    except Exception as exc:  # a Stripe outage: retried with backoff
        _failed(row_id, event, exc)
        return
    done = asyncio.get_running_loop().create_future()
    _ready.append((row_id, project, event, fetched, done))
    if len(_ready) == 1:
        # Every event whose re-read completes in this loop turn joins the same transaction.
        asyncio.get_running_loop().call_soon(_commit_ready)
    await done


def rows(ids: Iterable[int]) -> dict[int, WebhookEvent]:
    """Inbox rows `ids` with their projects, in one round trip: {id: row}. Call in a block."""
    query = (
        WebhookEvent.select(WebhookEvent, Project)
        .join(Project, peewee.JOIN.LEFT_OUTER)
        .where(WebhookEvent.id.in_(list(ids)))
    )
    return {row.id: row for row in query}


# Events re-read and waiting to be applied: (row id, project, event, fetched, future).
Ready = tuple[int, Project | None, JSON, JSON, asyncio.Future[None]]
_ready: list[Ready] = []
BATCH = 64  # events applied in one transaction at most


def _commit_ready() -> None:
    """Apply the ready events (up to BATCH) in one transaction: one commit, one log flush for all of them."""
    batch, _ready[:] = _ready[:BATCH], _ready[BATCH:]
    if _ready:
        asyncio.get_running_loop().call_soon(_commit_ready)
    try:
        _commit_batch(batch)
    finally:
        for *_, done in batch:
            if not done.done():
                done.set_result(None)


def _commit_batch(batch: list[Ready]) -> None:
    """Apply `batch` in one transaction; each event in its own if that fails (a deadlock, a bad event)."""
    try:
        with block(), transaction():
            results = _apply_batch(batch)
    except Exception:  # nothing of the batch is kept: each event gets its own transaction and retries
        for row_id, project, event, fetched, _ in batch:
            _apply_alone(row_id, project, event, fetched)
        return
    for item, (outcome, reason) in zip(batch, results, strict=True):
        if reason and outcome is not None:
            log.info("webhook %s (%s) ignored: %s", item[2]["id"], item[2]["type"], reason)


def _apply_batch(
    batch: Sequence[tuple[int, Project | None, JSON, JSON, object]],
) -> list[tuple[Outcome | None, str | None]]:
    """Lock each inbox row of the batch, apply it if still pending, mark it; [(outcome, reason)]. In a transaction.

    One row at a time, by primary key: MariaDB runs `id IN (...)` over a few dozen ids as a range
    scan that also locks the gaps, and then deadlocks with the deliveries being stored meanwhile.
    """
    results: list[tuple[Outcome | None, str | None]] = []
    now = utcnow()
    for row_id, project, event, fetched, _ in batch:
        locked = locking(WebhookEvent.select(WebhookEvent.outcome).where(WebhookEvent.id == row_id)).first()
        if locked is None or locked.outcome not in (Outcome.RECEIVED, Outcome.FAILED):
            results.append((None, None))  # another worker (or a Stripe retry, inline) got there first
            continue
        outcome, reason = _outcome(project, event, fetched)
        results.append((outcome, reason))
        WebhookEvent.update(
            outcome=outcome, processed_at=now, error=None, retry_at=None, reason=reason and reason[:255]
        ).where(WebhookEvent.id == row_id).execute()
    return results


def _outcome(project: Project | None, event: JSON, fetched: JSON) -> events.Result:
    return events.apply(project, event, fetched) if project is not None else (Outcome.IGNORED, webhooks.UNROUTED)


def _apply_alone(row_id: int, project: Project | None, event: JSON, fetched: JSON) -> None:
    """Apply one re-read event in its own transaction, retrying deadlocks; a failure is recorded for a retry."""
    failure = None
    for _ in range(3):  # a deadlock between concurrent applies is retried, not failed
        try:
            with block():
                try:
                    with transaction():
                        (outcome, reason), *_ = _apply_batch([(row_id, project, event, fetched, None)])
                except Exception as exc:
                    failure = exc
                else:
                    if reason and outcome is not None:
                        log.info("webhook %s (%s) ignored: %s", event["id"], event["type"], reason)
                    return
        except DatabaseUnavailable:
            return  # still pending: due() hands it out again once the database is back
        if not retryable(failure):
            break
    assert failure is not None  # every turn that did not return set it
    _failed(row_id, event, failure)


# (project id, livemode, "session" | "customer" | "subscription", Stripe object id)
ReadKey = tuple[int, bool, str, str]
# Re-reads shared between events about the same object: (project, livemode, what, id) -> (highest
# inbox id stored before the read started, the read). An event stored before a read started is
# older than what that read returns, so the read serves it as its own would (newer-wins keeps).
_reads: dict[ReadKey, tuple[int, asyncio.Future[JSON]]] = {}
_seen = {"id": 0}  # the highest inbox id stored when due() last looked
READS_KEPT = 10_000


def _read_key(project: Project, event: JSON) -> ReadKey | None:
    obj = obj_of(event)
    if event["type"] == "checkout.session.completed":
        what, object_id = "session", stripe_id(obj.get("id"))
    elif event["type"] in CUSTOMER_EVENTS:
        what, object_id = "customer", customer_id_of(obj)
    else:
        what, object_id = "subscription", subscription_id_of(event)
    return (project.id, bool(event.get("livemode")), what, object_id) if object_id else None


async def _fetch(row_id: int, project: Project, event: JSON, config: Config, box: SecretBox) -> JSON:
    """events.fetch for inbox row `row_id`, reusing a read of the same object that started after the row was stored."""
    key, stripe_key = _read_key(project, event), projects.stripe_secret_key(project, box, config.stripe_secret_key)
    if key is None or not stripe_key:  # without a key the payload itself is judged: nothing to share
        return await events.fetch(event, project, config=config, box=box)
    shared = _reads.get(key)
    if shared is None or shared[0] < row_id or (shared[1].done() and shared[1].exception() is not None):
        # Every id up to the highest one due() has seen stored was handed out (the event was
        # received) before now, even if its row committed later.
        newest = max(_seen["id"], row_id)
        if len(_reads) >= READS_KEPT:
            _reads.clear()
        shared = _reads[key] = (newest, asyncio.ensure_future(events.fetch(event, project, config=config, box=box)))
    return dict(await asyncio.shield(shared[1]))


def _failed(row_id: int, event: JSON, exc: BaseException) -> None:
    error = webhooks.short_error(exc)
    try:
        with block():
            row = WebhookEvent.get_by_id(row_id)
            attempts = row.attempts + 1
            retry_at = utcnow() + timedelta(seconds=backoff(attempts)) if attempts < MAX_ATTEMPTS else None
            WebhookEvent.update(outcome=Outcome.FAILED, error=error, attempts=attempts, retry_at=retry_at).where(
                WebhookEvent.id == row_id, WebhookEvent.outcome.in_([Outcome.RECEIVED, Outcome.FAILED])
            ).execute()
        log.warning(
            "webhook %s (%s) failed (attempt %d): %s; %s",
            event["id"],
            event["type"],
            attempts,
            error,
            f"retrying in {backoff(attempts):.0f} s" if retry_at else "no more retries by the worker",
        )
    except (DatabaseUnavailable, peewee.PeeweeException) as record_exc:
        log.error("webhook %s: the failure could not be recorded (%s)", event["id"], type(record_exc).__name__)


async def run(config: Config, box: SecretBox, stop: asyncio.Event) -> None:
    """Apply due events until `stop` is set, CONCURRENCY at a time; then let the ones in flight finish."""
    inflight: dict[int, asyncio.Future[None]] = {}
    _reads.clear()
    _ready.clear()
    _seen["id"] = 0
    while not stop.is_set():
        free = CONCURRENCY - len(inflight)
        ids: list[int] = []
        if free > 0:
            try:
                with block():
                    ids = due(free, set(inflight))
            except DatabaseUnavailable:
                await asyncio.sleep(1.0)
                continue
        found: dict[int, WebhookEvent] = {}
        if ids:
            try:
                with block():
                    found = rows(ids)
            except DatabaseUnavailable:
                await asyncio.sleep(1.0)
                continue
        for row_id in ids:
            task = asyncio.ensure_future(apply_one(row_id, config=config, box=box, row=found.get(row_id)))
            inflight[row_id] = task
            # mypy cannot type a lambda whose default argument binds the loop variable.
            task.add_done_callback(lambda _t, row_id=row_id: inflight.pop(row_id, None))  # type: ignore[misc]
        if not ids:
            try:
                await asyncio.wait_for(stop.wait(), IDLE_POLL)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(0)
    if inflight:
        await asyncio.wait(list(inflight.values()), timeout=STOP_GRACE)


def main(config: Config, box: SecretBox) -> int:
    """`run.py worker`: apply the inbox until SIGTERM/SIGINT."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("inbox worker started (concurrency %d)", CONCURRENCY)
        started = time.monotonic()
        await run(config, box, stop)
        log.info("inbox worker stopped after %.0f s", time.monotonic() - started)

    asyncio.run(serve())
    return 0
