"""The database: a Peewee proxy opened from PULSE_DATABASE_URL, the `block()` every query runs in, transactions."""

import contextlib
import logging
import os
import re
import select
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import peewee
from playhouse.db_url import parse

log = logging.getLogger("pulse.db")

database = peewee.DatabaseProxy()

# Errors that mean "the database is not there", as opposed to a bad query.
CONNECTION_ERRORS = (peewee.OperationalError, peewee.InterfaceError)
_MYSQL_GONE = {2002, 2003, 2006, 2013, 2055, 1927, 1053}
_PING_AFTER = 30.0
# Connecting (TCP and the MySQL handshake) blocks the event loop: bound it tightly, then fail fast
# for a moment, so an unreachable database costs each request milliseconds, not seconds.
CONNECT_TIMEOUT = 2
QUERY_TIMEOUT = 30
_RETRY_AFTER = 1.0
# How long SQLite waits for another process's write lock (blocking the loop) before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 10000


class DatabaseUnavailable(Exception):
    """The database cannot be reached right now; callers answer 503."""


def utcnow() -> datetime:
    """Naive UTC now, as stored in every DateTimeField (second precision on MySQL)."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 with Z for a stored naive-UTC datetime, or None."""
    if value is None:
        return None
    return value.replace(microsecond=0).isoformat() + "Z"


def from_timestamp(value: int | str | None) -> datetime | None:
    """A naive-UTC datetime from a Unix timestamp (Stripe's), or None."""
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value), UTC).replace(tzinfo=None)


def is_mysql(db: peewee.Database | None = None) -> bool:
    """True when the bound database is MySQL/MariaDB."""
    target = db or database.obj
    return isinstance(target, peewee.MySQLDatabase)


def open_database(url: str) -> "PulseSqliteDatabase | PulseMySQLDatabase":
    """Open (lazily) the database at `url` with the settings we rely on."""
    if url.startswith("sqlite"):
        _create_private(url)
        db: PulseSqliteDatabase | PulseMySQLDatabase = PulseSqliteDatabase(
            **parse(url),
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
                "foreign_keys": 1,
                "synchronous": "normal",
            },
        )
    else:
        params: dict[str, Any] = {
            "charset": "utf8mb4",
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": QUERY_TIMEOUT,
            "write_timeout": QUERY_TIMEOUT,
            "init_command": "SET time_zone = '+00:00', "
            "sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO'",
        }
        params.update(parse(url))
        db = PulseMySQLDatabase(params.pop("database"), **params)
    db._pulse_last_used = 0.0
    return db


def _create_private(url: str) -> None:
    """Create a new SQLite file 0600: it holds emails, payloads and hashes (L9).

    SQLite gives the -wal and -shm files the mode of the database file, so they are 0600 too.
    An existing file keeps the mode its operator chose.
    """
    path = url.split("://", 1)[1][1:].split("?", 1)[0] if url.startswith("sqlite:///") else ""
    if path in ("", ":memory:") or os.path.exists(path):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


# Storing a webhook delivery in the inbox (and marking it) changes nothing any cache holds: during
# a burst of deliveries it must not empty the API-key and hot-path caches on every insert. Nor do
# checkout leases (taken and released by every checkout; no cache reads them).
_UNCACHED_WRITE = re.compile(
    r"(INSERT INTO|UPDATE|DELETE FROM) [`\"](webhook_event|checkout_lease)[`\"] ", re.IGNORECASE
)


if TYPE_CHECKING:
    # So mypy sees the database methods this mixin extends (Any to it: Peewee is untyped).
    from peewee import Database as _Database
else:
    _Database = object


class WriteGeneration(_Database):
    """Mixin: a counter that moves on every write statement and commit made through this handle.

    In-process caches (API keys, the hot path) remember the generation they read at and drop an
    answer once it has moved, so nothing read before a change committed is served after it. The
    count moves before and after each write runs (a read that overlaps one cannot be stored) and
    after each commit, in any thread of the process. Reads (SELECT) leave it alone, and so do the
    inbox's own writes and the commit of a transaction that made only those.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_generation = 0
        self._write_generation_lock = threading.Lock()
        # Per thread: False while the open transaction has written only inbox rows (its commit is skipped).
        self._cached_write = threading.local()

    def write_generation(self) -> int:
        """The current count; equal values mean no write or commit happened in between."""
        return self._write_generation

    def _wrote(self) -> None:
        with self._write_generation_lock:
            self._write_generation += 1

    def execute_sql(self, sql: str, params: Sequence[Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        """Peewee's execute_sql (-> a DB-API cursor), moving the generation around each write that caches see."""
        head = sql.lstrip()[:40]
        if head[:6].upper() == "SELECT":
            return super().execute_sql(sql, params, *args, **kwargs)
        if head[:5].upper() == "BEGIN":  # SQLite's; a transaction changes nothing until its commit
            self._cached_write.__dict__.pop("pending", None)
            return super().execute_sql(sql, params, *args, **kwargs)
        if _UNCACHED_WRITE.match(head):
            self._cached_write.__dict__.setdefault("pending", False)
            return super().execute_sql(sql, params, *args, **kwargs)
        self._cached_write.pending = True
        self._wrote()
        try:
            return super().execute_sql(sql, params, *args, **kwargs)
        finally:
            self._wrote()

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        """Peewee's commit, then the generation moves unless the transaction wrote only inbox rows."""
        try:
            return super().commit(*args, **kwargs)
        finally:
            if self._cached_write.__dict__.pop("pending", True):
                self._wrote()


class PulseSqliteDatabase(WriteGeneration, peewee.SqliteDatabase):
    """SQLite with the write generation."""


class PulseMySQLDatabase(WriteGeneration, peewee.MySQLDatabase):
    """MySQL with the write generation; its handshake is bounded by connect_timeout (PyMySQL waits read_timeout)."""

    def _connect(self) -> Any:
        params = dict(self.connect_params, read_timeout=self.connect_params.get("connect_timeout", CONNECT_TIMEOUT))
        conn = peewee.mysql.connect(db=self.database, autocommit=True, **params)
        # From now on queries get the longer read timeout (PyMySQL applies it on the next read).
        conn._read_timeout = self.connect_params.get("read_timeout", QUERY_TIMEOUT)
        return conn


def bind(url: str) -> peewee.Database:
    """Point the shared proxy at the database for `url` and return it."""
    db = open_database(url)
    database.initialize(db)
    return db


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, peewee.InterfaceError):
        return True
    code = _code(exc)
    if code is not None:
        return code in _MYSQL_GONE
    text = str(exc).lower()
    # SQLite: another process holds the write lock past busy_timeout (a backup, a shell, a long write):
    # the database is unavailable for now, which is a 503 to retry, not a 500.
    return (
        "unable to open" in text
        or "lost connection" in text
        or "can't connect" in text
        or "database is locked" in text
        or "database is busy" in text
    )


def _peer_closed(db: peewee.Database) -> bool:
    """True when the server already closed our idle connection (EOF or an error packet is waiting)."""
    sock = getattr(db.connection(), "_sock", None)
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _connect(db: peewee.Database) -> None:
    # Kept on the database object: another database bound in the same process is not "down".
    failed_at = getattr(db, "_pulse_connect_failed_at", None)
    if failed_at is not None and time.monotonic() - failed_at < _RETRY_AFTER:
        raise DatabaseUnavailable()
    try:
        db.connect()
    except CONNECTION_ERRORS:
        db._pulse_connect_failed_at = time.monotonic()
        raise
    db._pulse_connect_failed_at = None


def _ensure_connected(db: peewee.Database) -> None:
    if db.is_closed():
        _connect(db)
    elif is_mysql(db) and _peer_closed(db):
        # Restarted server, failover, proxy cut: reconnect now instead of failing this request.
        db.close()
        _connect(db)
    elif is_mysql(db) and time.monotonic() - db._pulse_last_used > _PING_AFTER:
        # An idle MySQL connection may have been dropped by wait_timeout or a failover.
        try:
            db.connection().ping(reconnect=False)
        except Exception:
            db.close()
            _connect(db)
    db._pulse_last_used = time.monotonic()


@contextlib.contextmanager
def block() -> Iterator[peewee.Database]:
    """A short synchronous database block: every query runs inside one; connects, turns outages into 503s.

    "Block" as in a stretch of code that blocks the event loop: the queries in it run one after
    another on this thread, and the loop serves nobody meanwhile. So keep it short and never
    `await` inside it (a Stripe call goes between two blocks). It is not a transaction: open one
    inside it with `transaction()` (or `database.atomic()`) when several writes must commit together.

    On entry it connects if needed (re-checking an idle MySQL connection); a connection error,
    on entry or from a query, closes the connection and becomes DatabaseUnavailable, which the
    handlers answer with 503 (the next block reconnects). The connection stays open between
    blocks (one per thread, Peewee's model), so the hot path pays no connect.
    """
    db = database.obj
    try:
        _ensure_connected(db)
        yield db
    except DatabaseUnavailable:
        log.debug("database unavailable: not retrying yet")
        raise
    except CONNECTION_ERRORS as exc:
        if isinstance(exc, peewee.OperationalError) and not _is_connection_error(exc):
            raise
        log.warning("database unavailable: %s", type(exc).__name__)
        with contextlib.suppress(Exception):
            db.close()
        raise DatabaseUnavailable() from None


# ---------------------------------------------------------------- transactions, locks and retries (inside a block)


def transaction() -> contextlib.AbstractContextManager[Any]:
    """A write transaction; on SQLite take the write lock up front (no deferred-upgrade deadlock).

    Use inside `block()`. A plain `database.atomic()` on SQLite starts DEFERRED: two writers that
    both read first then both try to upgrade, and one fails at once with "database is locked".
    """
    if is_mysql():
        return database.atomic()
    return database.atomic("IMMEDIATE")


def locking(query: peewee.ModelSelect) -> peewee.ModelSelect:
    """`query` as a locking read (SELECT ... FOR UPDATE) on MySQL; unchanged on SQLite (already locked by IMMEDIATE).

    Use after a duplicate-key error: a locking read sees the latest committed row under MySQL's
    REPEATABLE READ, where a plain read would still show the transaction's older snapshot.
    """
    return query.for_update() if is_mysql() else query


def _code(exc: BaseException) -> int | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], int) else None


def retryable(exc: BaseException) -> bool:
    """A MySQL deadlock (1213): the server rolled back at once, so the whole transaction may be retried."""
    return isinstance(exc, peewee.OperationalError) and _code(exc) == 1213


def lock_timeout(exc: BaseException) -> bool:
    """A lock we already waited for (MySQL lock wait timeout 1205, SQLite busy_timeout): retrying would wait again."""
    return isinstance(exc, peewee.OperationalError) and (_code(exc) == 1205 or "database is locked" in str(exc).lower())
