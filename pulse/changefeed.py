"""The change feed behind the hot path's read model: which users' answers a committed change touched.

Database triggers on `subscription`, `customer`, `customer_state` and `project` (the tables GET
/api/subscription reads) add a `read_model_change` row in the same transaction as the change, whoever makes it: our
code, a migration, an operator's SQL. Each process reads the rows committed since its last look
(`Feed.changes`, one indexed query) and drops the answers they name, so answers can stay in memory
until they change instead of for a fixed TTL.

Auto-increment ids are handed out at insert and committed later, so on MySQL a lower id can commit
after a higher one has been read: an id skipped over is re-checked for GAP_WAIT seconds.
"""

import time
from datetime import timedelta

import peewee

from pulse.db import is_mysql, utcnow
from pulse.models import ReadModelChange

TABLE = ReadModelChange._meta.table_name
PAGE = 2000
# One feed row: (project_id, customer_id or None, external_user_id or None); both None names the whole project.
Change = tuple[int, int | None, str | None]
# How long a skipped id (a transaction still open, or rolled back) is looked for again. Longer than
# any write transaction lasts: MySQL's lock wait timeout makes them short.
GAP_WAIT = 30.0
MAX_GAPS = 5000
# Rows older than this are deleted, at most once per PRUNE_EVERY per process. A process that has not
# looked for longer than KEEP / 2 drops its whole read model instead of trusting a pruned feed.
KEEP = 600.0
PRUNE_EVERY = 60.0

# (trigger, table, event, rows it writes as (project_id, customer_id, external_user_id) expressions).
_TRIGGERS = (
    ("subscription", "INSERT", [("NEW.project_id", "NEW.customer_id", "NULL")]),
    (
        "subscription",
        "UPDATE",
        [("NEW.project_id", "NEW.customer_id", "NULL"), ("OLD.project_id", "OLD.customer_id", "NULL")],
    ),
    ("subscription", "DELETE", [("OLD.project_id", "OLD.customer_id", "NULL")]),
    ("customer", "INSERT", [("NEW.project_id", "NEW.id", "NEW.external_user_id")]),
    (
        "customer",
        "UPDATE",
        [("NEW.project_id", "NEW.id", "NEW.external_user_id"), ("OLD.project_id", "OLD.id", "OLD.external_user_id")],
    ),
    ("customer", "DELETE", [("OLD.project_id", "OLD.id", "OLD.external_user_id")]),
    # Stripe Entitlements (pulse.entitlements) are the answer's `features`.
    ("customer_state", "INSERT", [("NEW.project_id", "NEW.customer_id", "NULL")]),
    ("customer_state", "UPDATE", [("NEW.project_id", "NEW.customer_id", "NULL")]),
    ("customer_state", "DELETE", [("OLD.project_id", "OLD.customer_id", "NULL")]),
    # A project's access policy is part of every answer; deleting it cascades (MySQL fires no
    # triggers for cascaded rows), so both name the whole project.
    ("project", "UPDATE", [("NEW.id", "NULL", "NULL")]),
    ("project", "DELETE", [("OLD.id", "NULL", "NULL")]),
)


def trigger_names() -> list[str]:
    """The feed's trigger names (pulse_rm_<table>_<event>), in _TRIGGERS order."""
    return [f"pulse_rm_{table}_{event.lower()}" for table, event, _ in _TRIGGERS]


def create_triggers(db: peewee.Database) -> None:
    """(Re)create the feed's triggers on `db` (MySQL with binary logging needs log_bin_trust_function_creators)."""
    for name, (table, event, rows) in zip(trigger_names(), _TRIGGERS, strict=True):
        values = ", ".join(f"({', '.join(row)})" for row in rows)
        insert = f"INSERT INTO {TABLE} (project_id, customer_id, external_user_id) VALUES {values}"
        db.execute_sql(f"DROP TRIGGER IF EXISTS {name}")
        body = insert if is_mysql(db) else f"BEGIN {insert}; END"
        db.execute_sql(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW {body}")


class Feed:
    """One process's position in the feed of one database."""

    def __init__(self) -> None:
        self.last: int | None = None  # highest id read; None until the first look
        self.gaps: dict[int, float] = {}  # skipped id -> when first skipped
        self.step = 1
        self.looked_at = 0.0
        self.pruned_at = time.monotonic()

    def changes(self, db: peewee.Database) -> list[Change] | None:
        """The (project_id, customer_id, external_user_id) rows committed since the last call.

        Returns None when the caller must drop everything it holds (first look, or too long since
        the last one). Runs queries on `db`: call inside a db block.
        """
        now = time.monotonic()
        stale = self.last is None or now - self.looked_at > KEEP / 2
        if stale:
            self._start(db)
        found = [] if stale else self._read(db, now)
        self.looked_at = now
        if now - self.pruned_at > PRUNE_EVERY:
            self.pruned_at = now
            self._prune(db)
        return None if stale else found

    def _start(self, db: peewee.Database) -> None:
        if is_mysql(db):
            self.step = int(db.execute_sql("SELECT @@auto_increment_increment").fetchone()[0] or 1)
        self.last = db.execute_sql(f"SELECT MAX(id) FROM {TABLE}").fetchone()[0] or 0
        self.gaps = {}

    def _read(self, db: peewee.Database, now: float) -> list[Change]:
        assert self.last is not None  # changes() reads only once _start() has set a position
        found: list[Change] = []
        param = db.param
        while True:
            gaps = sorted(self.gaps)[:500]
            where = f"id > {param}" + (f" OR id IN ({', '.join([param] * len(gaps))})" if gaps else "")
            rows = db.execute_sql(
                f"SELECT id, project_id, customer_id, external_user_id FROM {TABLE} WHERE {where} "
                f"ORDER BY id LIMIT {PAGE}",
                [self.last, *gaps],
            ).fetchall()
            expected = self.last + self.step
            for row_id, project_id, customer_id, external_user_id in rows:
                if self.gaps.pop(row_id, None) is None and row_id > self.last:
                    for missing in range(expected, row_id, self.step):
                        self.gaps[missing] = now
                    expected = row_id + self.step
                    self.last = row_id
                found.append((project_id, customer_id, external_user_id))
            if len(rows) < PAGE:
                break
        self.gaps = {gap: since for gap, since in self.gaps.items() if now - since < GAP_WAIT}
        if len(self.gaps) > MAX_GAPS:
            # Far more holes than open transactions: treat it as a lost position.
            self.last, self.gaps = None, {}
        return found

    def _prune(self, db: peewee.Database) -> None:
        # Never the newest row: SQLite (and MySQL before 8) would hand its id out again.
        ReadModelChange.delete().where(
            (ReadModelChange.created_at < utcnow() - timedelta(seconds=KEEP)) & (ReadModelChange.id < (self.last or 0))
        ).execute()
