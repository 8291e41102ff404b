"""The hot path, GET /api/subscription: a per-process read model in front of one lean SQL query."""

import itertools
import json
import logging
import time
import weakref
from typing import Any

import peewee as pw

from pulse import changefeed, status
from pulse.db import DatabaseUnavailable, block, database
from pulse.models import Customer, CustomerState, Project, Subscription

# Stand-ins used once to compile the query; their positions in the parameter list are remembered.
_PROJECT_MARK = -918273645
_USER_MARK = "\x00pulse-hotpath-user\x00"
_compiled: dict[type, tuple[str, list, int, int]] = {}
log = logging.getLogger("pulse.hotpath")
# Answers served from memory and read from the database since the process started (log_stats).
STATS = {"hits": 0, "misses": 0, "reports": 0}
# (customer found, the JSON body as bytes or None without a subscription): what answer() returns.
Answer = tuple[bool, bytes | None]

# The read model: answers stay in memory until the change feed (pulse.changefeed) names their user.
# Another process's change shows once this process looks at the feed, at most POLL seconds after
# the change (SPEC: 2 s); a change made through this process's database handle moves its write
# generation (pulse.db.WriteGeneration) and the feed is read before the next answer (at once).
POLL = 0.5
CACHE_MAX = 200_000


def _select() -> pw.ModelSelect:
    # One round trip: the customer, the project's access policy (fresh, never cached), its
    # subscriptions, and how many of the user's subscriptions grant access, as plain tuples.
    others = Subscription.alias("others")
    with_access = others.select(pw.fn.COUNT(others.id)).where(
        (others.customer == Customer.id) & status.access_condition(others, Project)
    )
    columns = [getattr(Subscription, name) for name in status.PUBLIC_COLUMNS]
    return (
        Customer.select(
            Customer.id,
            Customer.project,
            Customer.external_user_id,
            Customer.email,
            Customer.stripe_customer_id,
            Project.past_due_has_access,
            Project.paused_collection_has_access,
            with_access,
            *columns,
            CustomerState.features,
        )
        .join(Project, on=(Project.id == Customer.project))
        .switch(Customer)
        .join(CustomerState, pw.JOIN.LEFT_OUTER, on=(CustomerState.customer == Customer.id))
        .switch(Customer)
        .join(Subscription, pw.JOIN.LEFT_OUTER, on=(Subscription.customer == Customer.id))
    )


def _query(project_id: int, external_user_id: str) -> pw.ModelSelect:
    # The current subscription first (status.current_order).
    return (
        _select()
        .where((Customer.project == project_id) & (Customer.external_user_id == external_user_id))
        .order_by(*status.current_order(Subscription, Project))
        .limit(1)
        .tuples()
    )


def _compile(db: pw.Database) -> tuple[str, list[Any], int, int]:
    """(sql, params, project slot, user slot) for this database; Peewee builds it once, not per request."""
    key = type(db)
    if key not in _compiled:
        sql, params = _query(_PROJECT_MARK, _USER_MARK).sql()
        _compiled[key] = (sql, list(params), params.index(_PROJECT_MARK), params.index(_USER_MARK))
    return _compiled[key]


class _State:
    """Per database handle: the answers, who they belong to, and the position in the change feed."""

    def __init__(self) -> None:
        self.answers: dict[tuple[int, str], Answer] = {}  # (project id, external user id) -> answer
        self.customers: dict[int, tuple[int, str]] = {}  # customer id -> its answer's key
        self.feed = changefeed.Feed()
        self.generation: int | None = None
        self.synced_at = float("-inf")

    def sync(self, db: pw.Database, now: float) -> None:
        generation = db.write_generation()  # before reading: a write meanwhile makes the next call look again
        changes = self.feed.changes(db)
        if changes is None:
            self.answers, self.customers = {}, {}
        else:
            for project_id, customer_id, external_user_id in changes:
                self.forget(project_id, customer_id, external_user_id)
        self.generation, self.synced_at = generation, now

    def forget(self, project_id: int, customer_id: int | None, external_user_id: str | None) -> None:
        if external_user_id is not None:
            self.answers.pop((project_id, external_user_id), None)
        if customer_id is not None:
            key = self.customers.pop(customer_id, None)
            if key is not None:
                self.answers.pop(key, None)
        if customer_id is None and external_user_id is None:  # the project's policy changed
            self.answers = {key: answer for key, answer in self.answers.items() if key[0] != project_id}

    def remember(self, key: tuple[int, str], customer_id: int | None, answer: Answer) -> None:
        if len(self.answers) >= CACHE_MAX:
            # Full: forget the tenth stored longest ago (dicts keep insertion order).
            for old in list(itertools.islice(self.answers, CACHE_MAX // 10)):
                del self.answers[old]
            if len(self.customers) > 2 * CACHE_MAX:
                self.customers = {cid: k for cid, k in self.customers.items() if k in self.answers}
        self.answers[key] = answer
        if customer_id is not None:
            self.customers[customer_id] = key


# Keyed by the handle itself (weakly): tests and tools rebind the proxy between databases.
_states: weakref.WeakKeyDictionary[pw.Database, _State] = weakref.WeakKeyDictionary()


def _state_of(db: pw.Database) -> _State:
    """The read model of `db`, brought up to date with the feed when due (a local write, or POLL elapsed)."""
    state = _states.get(db)
    if state is None:
        state = _states[db] = _State()
    now = time.monotonic()
    if state.generation != db.write_generation() or now - state.synced_at >= POLL:
        state.sync(db, now)
    return state


def answer(project_id: int, external_user_id: str) -> Answer:
    """`(customer_found, body)` for GET /api/subscription: body is the JSON (bytes), None without a subscription.

    Opens its own db block, and only when it needs the database: an answer held in memory, with
    the feed read less than POLL ago and no write since, is served without one (no connection
    check). `customer_found` lets the handler word its 404. Raises DatabaseUnavailable.
    """
    db = database.obj
    key = (project_id, external_user_id)
    state = _states.get(db)
    if state is not None and state.generation == db.write_generation() and time.monotonic() - state.synced_at < POLL:
        hit = state.answers.get(key)
        if hit is not None:
            STATS["hits"] += 1
            return hit
    with block():
        state = _state_of(db)
        hit = state.answers.get(key)
        if hit is not None:
            STATS["hits"] += 1
            return hit
        STATS["misses"] += 1
        generation = db.write_generation()
        customer_id, hit = _read(db, project_id, external_user_id)
        if db.write_generation() == generation:  # nothing changed through this handle while we read
            state.remember(key, customer_id, hit)
        return hit


def subscription_of(project_id: int, external_user_id: str) -> tuple[bool, dict[str, Any] | None]:
    """`(customer_found, body)` as answer() gives, with body as a dict."""
    found, body = answer(project_id, external_user_id)
    return found, None if body is None else json.loads(body)


def _read(db: pw.Database, project_id: int, external_user_id: str) -> tuple[int | None, Answer]:
    sql, params, project_slot, user_slot = _compile(db)
    params = list(params)
    params[project_slot], params[user_slot] = project_id, external_user_id
    row = db.execute_sql(sql, params).fetchone()
    if row is None:
        return None, (False, None)
    return row[0], _answer_of(row)


def _answer_of(row: tuple[Any, ...]) -> Answer:
    """(customer found, JSON bytes or None) from one row of _select()."""
    sub = dict(zip(status.PUBLIC_COLUMNS, row[8:-1], strict=True))  # the last column is the features
    if sub["stripe_subscription_id"] is None:
        return True, None
    customer = {"external_user_id": row[2], "email": row[3], "stripe_customer_id": row[4]}
    body = status.public_subscription(sub, status.Policy(bool(row[5]), bool(row[6])), row[7], customer)
    body["features"] = json.loads(row[-1]) if row[-1] else []  # Stripe Entitlements' lookup keys (pulse.entitlements)
    return True, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------- warming up


WARM_MAX = 100_000
WARM_PAGE = 500


def _warm_page(db: pw.Database, state: _State, after: int) -> int | None:
    """Load the answers of the customers after id `after` (one page); the last id read, or None at the end."""
    ids = [
        row[0]
        for row in db.execute_sql(
            f"SELECT id FROM {Customer._meta.table_name} WHERE id > {db.param} ORDER BY id LIMIT {WARM_PAGE}", [after]
        ).fetchall()
    ]
    if not ids:
        return None
    _state_of(db)  # the feed first: what is read below is at least that new
    generation = db.write_generation()
    rows = (
        _select()
        .where(Customer.id.between(ids[0], ids[-1]))
        .order_by(Customer.id, *status.current_order(Subscription, Project))
        .tuples()
    )
    seen = set()
    for row in rows:
        if row[0] in seen:
            continue  # the current subscription came first
        seen.add(row[0])
        if db.write_generation() != generation:
            break
        key = (row[1], row[2])
        if key not in state.answers:
            state.remember(key, row[0], _answer_of(row))
    return ids[-1]


async def warm_up() -> None:
    """Fill this process's read model with up to WARM_MAX answers, a page per loop turn (started by server.py).

    A process that starts cold would read the database for every user's first request; this
    reads them in pages instead. Changes meanwhile are caught by the feed as for any answer.
    """
    import asyncio

    started, count = time.monotonic(), 0
    after: int | None = 0  # the last customer id loaded; None once every page is read
    try:
        while after is not None and count < WARM_MAX:
            with block() as db:
                state = _state_of(db)
                after = _warm_page(db, state, after)
                count = len(state.answers)
            await asyncio.sleep(0)
    except DatabaseUnavailable:
        log.warning("read model warm-up stopped: database unavailable")
        return
    log.info("read model warmed: %d answers in %.1f s", count, time.monotonic() - started)


def log_stats() -> None:
    """Log the cache counters (the server calls this on SIGUSR1; `make bench` reads the line)."""
    STATS["reports"] += 1
    entries = sum(len(state.answers) for state in list(_states.values()))
    log.info(
        "hot-path cache: report=%d hits=%d misses=%d entries=%d",
        STATS["reports"],
        STATS["hits"],
        STATS["misses"],
        entries,
    )
