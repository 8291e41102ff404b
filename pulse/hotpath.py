"""The hot path, GET /api/subscription: one lean SQL query straight to the public JSON shape, cached briefly."""

import time
import weakref
from datetime import datetime

import peewee as pw

from pulse.db import database, isoformat
from pulse.models import Customer, Project, Subscription
from pulse.status import ACCESS_STATUSES, has_access

# Stand-ins used once to compile the query; their positions in the parameter list are remembered.
_PROJECT_MARK = -918273645
_USER_MARK = "\x00pulse-hotpath-user\x00"
_compiled: dict[type, tuple[str, list, int, int]] = {}

# Answers are reused for at most CACHE_TTL seconds, so another process's change (a webhook it
# applied) shows within that time (SPEC: 2 s). A change made through this process's database
# handle empties the cache at once (pulse.db.WriteGeneration).
CACHE_TTL = 1.0
CACHE_MAX = 50000


def _query(project_id, external_user_id):
    # One round trip: the customer, the project's past-due policy (fresh, never cached) and the
    # subscription that wins (access first, then most recent), as plain tuples (no model objects).
    access_first = pw.Case(None, [(
        Subscription.status.in_(ACCESS_STATUSES)
        | ((Subscription.status == "past_due") & (Project.past_due_has_access == True)), 0)], 1)  # noqa: E712
    return (Customer
            .select(Customer.external_user_id, Customer.email, Customer.stripe_customer_id,
                    Project.past_due_has_access, Subscription.status, Subscription.plan_slug,
                    Subscription.interval, Subscription.stripe_price_id, Subscription.current_period_end,
                    Subscription.cancel_at, Subscription.trial_end, Subscription.stripe_subscription_id)
            .join(Project, on=(Project.id == Customer.project))
            .switch(Customer)
            .join(Subscription, pw.JOIN.LEFT_OUTER, on=(Subscription.customer == Customer.id))
            .where((Customer.project == project_id) & (Customer.external_user_id == external_user_id))
            .order_by(access_first, Subscription.started_at.desc(nulls="LAST"), Subscription.id.desc())
            .limit(1)
            .tuples())


def _compile(db):
    """(sql, params, project slot, user slot) for this database; Peewee builds it once, not per request."""
    key = type(db)
    if key not in _compiled:
        sql, params = _query(_PROJECT_MARK, _USER_MARK).sql()
        _compiled[key] = (sql, list(params), params.index(_PROJECT_MARK), params.index(_USER_MARK))
    return _compiled[key]


def _iso(value):
    # SQLite hands back the stored text ("2026-01-01 00:00:00[.ffffff]"), MySQL a datetime.
    if value is None or isinstance(value, datetime):
        return isoformat(value)
    return value[:19].replace(" ", "T") + "Z"


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
        return hit[1]
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
    (ext_id, email, stripe_customer_id, past_due_access, status, plan_slug, interval, price_id,
     period_end, cancel_at, trial_end, subscription_id) = row
    if subscription_id is None:
        return True, None
    return True, {
        "external_user_id": ext_id,
        "email": email,
        "status": status,
        "has_access": has_access(status, past_due_access),
        "plan_slug": plan_slug or None,
        "interval": interval or None,
        "stripe_price_id": price_id or None,
        "current_period_end": _iso(period_end),
        "cancel_at": _iso(cancel_at),
        "trial_end": _iso(trial_end),
        "stripe_customer_id": stripe_customer_id,
        "stripe_subscription_id": subscription_id,
    }
