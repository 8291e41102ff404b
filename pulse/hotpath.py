"""The hot path, GET /api/subscription: one lean SQL query straight to the public JSON shape, cached briefly."""

import logging
import time
import weakref
from datetime import datetime

import peewee as pw

from pulse import status
from pulse.db import database
from pulse.models import Customer, Project, Subscription

# Stand-ins used once to compile the query; their positions in the parameter list are remembered.
_PROJECT_MARK = -918273645
_USER_MARK = "\x00pulse-hotpath-user\x00"
_compiled: dict[type, tuple[str, list, int, int]] = {}
log = logging.getLogger("pulse.hotpath")
# Answers served from memory and read from the database since the process started (log_stats).
STATS = {"hits": 0, "misses": 0, "reports": 0}

# Answers are reused for at most CACHE_TTL seconds, so another process's change (a webhook it
# applied) shows within that time (SPEC: 2 s). A change made through this process's database
# handle empties the cache at once (pulse.db.WriteGeneration).
CACHE_TTL = 1.0
CACHE_MAX = 50000


def _query(project_id, external_user_id):
    # One round trip: the customer, the project's access policy (fresh, never cached), the current
    # subscription (status.current_order) and how many of the user's subscriptions grant access,
    # as plain tuples (no model objects).
    others = Subscription.alias("others")
    with_access = (others.select(pw.fn.COUNT(others.id))
                   .where((others.customer == Customer.id) & status.access_condition(others, Project)))
    columns = [getattr(Subscription, name) for name in status.PUBLIC_COLUMNS]
    return (Customer
            .select(Customer.external_user_id, Customer.email, Customer.stripe_customer_id,
                    Project.past_due_has_access, Project.paused_collection_has_access, with_access, *columns)
            .join(Project, on=(Project.id == Customer.project))
            .switch(Customer)
            .join(Subscription, pw.JOIN.LEFT_OUTER, on=(Subscription.customer == Customer.id))
            .where((Customer.project == project_id) & (Customer.external_user_id == external_user_id))
            .order_by(*status.current_order(Subscription, Project))
            .limit(1)
            .tuples())


def _compile(db):
    """(sql, params, project slot, user slot) for this database; Peewee builds it once, not per request."""
    key = type(db)
    if key not in _compiled:
        sql, params = _query(_PROJECT_MARK, _USER_MARK).sql()
        _compiled[key] = (sql, list(params), params.index(_PROJECT_MARK), params.index(_USER_MARK))
    return _compiled[key]


class _State:
    """Per database handle: the cached answers and the write generation they belong to."""

    def __init__(self):
        self.cache = {}
        self.generation = None


# Keyed by the handle itself (weakly): tests and tools rebind the proxy between databases.
_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_of(db):
    """The cache of `db`, emptied first if a write or commit went through `db` since it was filled."""
    state = _states.get(db)
    if state is None:
        state = _states[db] = _State()
    generation = db.write_generation()
    if state.generation != generation:
        state.cache, state.generation = {}, generation
    return state


def subscription_of(project_id, external_user_id):
    """`(customer_found, body)` for GET /api/subscription; body is None without a subscription.

    Call inside a db block. `customer_found` lets the handler word its 404. The caller must
    not mutate `body` (it may be shared with later requests for up to CACHE_TTL).
    """
    db = database.obj
    state = _state_of(db)
    slot = (project_id, external_user_id)
    hit = state.cache.get(slot)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        STATS["hits"] += 1
        return hit[1]
    STATS["misses"] += 1
    generation = state.generation
    answer = _read(db, project_id, external_user_id)
    if db.write_generation() == generation:  # nothing changed while we read
        if len(state.cache) >= CACHE_MAX:
            state.cache = {}
        state.cache[slot] = (now + CACHE_TTL, answer)
    return answer


def _read(db, project_id, external_user_id):
    sql, params, project_slot, user_slot = _compile(db)
    params = list(params)
    params[project_slot], params[user_slot] = project_id, external_user_id
    row = db.execute_sql(sql, params).fetchone()
    if row is None:
        return False, None
    sub = dict(zip(status.PUBLIC_COLUMNS, row[6:]))
    if sub["stripe_subscription_id"] is None:
        return True, None
    customer = {"external_user_id": row[0], "email": row[1], "stripe_customer_id": row[2]}
    return True, status.public_subscription(sub, status.Policy(bool(row[3]), bool(row[4])), row[5], customer)


def log_stats():
    """Log the cache counters (the server calls this on SIGUSR1; `make bench` reads the line)."""
    STATS["reports"] += 1
    entries = sum(len(state.cache) for state in list(_states.values()))
    log.info("hot-path cache: report=%d hits=%d misses=%d entries=%d", STATS["reports"], STATS["hits"],
             STATS["misses"], entries)
