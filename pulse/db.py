"""The database handle: one Peewee proxy, opened from PULSE_DATABASE_URL."""

import contextlib
import logging
import os
import select
import time
from datetime import datetime, timezone

import peewee
from playhouse.db_url import connect, parse

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


def utcnow():
    """Naive UTC now, as stored in every DateTimeField (second precision on MySQL)."""
    return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)


def isoformat(value):
    """ISO 8601 with Z for a stored naive-UTC datetime, or None."""
    if value is None:
        return None
    return value.replace(microsecond=0).isoformat() + "Z"


def from_timestamp(value):
    """A naive-UTC datetime from a Unix timestamp (Stripe's), or None."""
    if value in (None, ""):
        return None
    return datetime.fromtimestamp(int(value), timezone.utc).replace(tzinfo=None)


def is_mysql(db=None):
    """True when the bound database is MySQL/MariaDB."""
    target = db or database.obj
    return isinstance(target, peewee.MySQLDatabase)


def open_database(url):
    """Open (lazily) the database at `url` with the settings we rely on."""
    if url.startswith("sqlite"):
        _create_private(url)
        db = connect(url, pragmas={
            "journal_mode": "wal",
            "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
            "foreign_keys": 1,
            "synchronous": "normal",
        })
    else:
        params = {"charset": "utf8mb4",
                  "connect_timeout": CONNECT_TIMEOUT, "read_timeout": QUERY_TIMEOUT, "write_timeout": QUERY_TIMEOUT,
                  "init_command": "SET time_zone = '+00:00', sql_mode = 'STRICT_TRANS_TABLES,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO'"}
        params.update(parse(url))
        db = PulseMySQLDatabase(params.pop("database"), **params)
    db._pulse_last_used = 0.0
    return db


def _create_private(url):
    """Create a new SQLite file 0600: it holds emails, payloads and hashes (L9).

    SQLite gives the -wal and -shm files the mode of the database file, so they are 0600 too.
    An existing file keeps the mode its operator chose.
    """
    path = url.split("://", 1)[1][1:].split("?", 1)[0] if url.startswith("sqlite:///") else ""
    if path in ("", ":memory:") or os.path.exists(path):
        return
    with contextlib.suppress(FileExistsError, FileNotFoundError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class PulseMySQLDatabase(peewee.MySQLDatabase):
    """MySQL whose handshake is bounded by connect_timeout too (PyMySQL waits read_timeout for it)."""

    def _connect(self):
        params = dict(self.connect_params, read_timeout=self.connect_params.get("connect_timeout", CONNECT_TIMEOUT))
        conn = peewee.mysql.connect(db=self.database, autocommit=True, **params)
        # From now on queries get the longer read timeout (PyMySQL applies it on the next read).
        conn._read_timeout = self.connect_params.get("read_timeout", QUERY_TIMEOUT)
        return conn


def bind(url):
    """Point the shared proxy at the database for `url` and return it."""
    db = open_database(url)
    database.initialize(db)
    return db


def _is_connection_error(exc):
    if isinstance(exc, peewee.InterfaceError):
        return True
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if code is not None:
        return code in _MYSQL_GONE
    text = str(exc).lower()
    # SQLite: another process holds the write lock past busy_timeout (a backup, a shell, a long write):
    # the database is unavailable for now, which is a 503 to retry, not a 500.
    return ("unable to open" in text or "lost connection" in text or "can't connect" in text
            or "database is locked" in text or "database is busy" in text)


def _peer_closed(db):
    """True when the server already closed our idle connection (EOF or an error packet is waiting)."""
    sock = getattr(db.connection(), "_sock", None)
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _connect(db):
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


def _ensure_connected(db):
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
def block():
    """A short synchronous database block: connects if needed, turns outages into DatabaseUnavailable.

    The connection stays open between blocks (one per thread, Peewee's model), so the hot
    path pays no connect; after a connection error it is closed and the next block reconnects.
    Never hold a block across an `await`.
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
