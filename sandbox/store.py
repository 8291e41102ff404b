"""Each sandbox project's simulated Stripe account, kept in the database (table sandbox_state).

Kept in the database rather than in process memory, so the sandbox survives restarts and answers the
same from every worker of `run.py serve --processes N`. A call loads the account, runs synchronously on
it, and saves it under an optimistic lock (the version it read); a concurrent save makes it run again
on the newer state, so no change is ever lost and no transaction spans an await.
"""

import json

import peewee

from pulse.db import block, database, utcnow
from pulse.models import SandboxState
from sandbox.core import Simulator

ATTEMPTS = 20


class Busy(Exception):
    """Every attempt met a concurrent change (HTTP 409 lock_timeout, as Stripe answers)."""


def _load(project):
    row = SandboxState.get_or_none(SandboxState.project == project.id)
    if row is None:
        return Simulator(), 0
    return Simulator.from_state(json.loads(row.state)), row.version


def _save(project, sim, version):
    state = json.dumps(sim.to_state(), separators=(",", ":"))
    if version == 0:
        with database.atomic():
            if SandboxState.select().where(SandboxState.project == project.id).exists():
                return False
            SandboxState.create(project=project.id, state=state, version=1)
            return True
    return bool(
        SandboxState.update(state=state, version=version + 1, updated_at=utcnow())
        .where((SandboxState.project == project.id) & (SandboxState.version == version))
        .execute()
    )


def run(project, change, page_base=None):
    """`change(simulator)` on the project's account, saved; returns (its result, the events it queued).

    `change` must be synchronous and may run more than once (on a newer state after a conflict).
    """
    for _ in range(ATTEMPTS):
        with block():
            sim, version = _load(project)
            sim.page_base = page_base
            result = sim.run(change)
            events, sim.outbox = sim.outbox, []
            try:
                saved = _save(project, sim, version)
            except peewee.IntegrityError:  # a racing first insert hit the unique index
                saved = False
        if saved:
            return result, events
    raise Busy()


def read(project):
    """The project's account as it is now (not saved back)."""
    with block():
        return _load(project)[0]
