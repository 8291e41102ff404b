"""Console sign-in: server-side sessions, the login lockout and password changes (web-free)."""

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta

from pulse import projects, security
from pulse.db import database, is_mysql, utcnow
from pulse.models import LoginFailure, Session, User
from pulse.projects import normalize_email

# A session ends 12 h after sign-in (absolute) or after 2 h without a request (idle), whichever is first.
ABSOLUTE_LIFETIME = timedelta(hours=12)
IDLE_TIMEOUT = timedelta(hours=2)
# last_seen_at is written at most this often, so browsing does not write on every page.
TOUCH_EVERY = timedelta(minutes=1)

MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
LOCKOUT = timedelta(minutes=15)
# Seconds a sign-in waits for another attempt on the same email+address to be counted (MySQL).
ATTEMPT_LOCK_WAIT = 5
# The lockout scope of current-password checks on /console/account (per account, any address).
ACCOUNT_SCOPE = "account"


def find_user(email: str) -> User | None:
    """The account for `email`'s key (NFKC, case-folded), or None. Call inside a db block."""
    return projects.find_user(email)


def create_session(user: User, ip: str | None = None, user_agent: str = "") -> str:
    """Start a session for `user`; returns the raw token for the cookie (only its hash is stored)."""
    raw, digest = security.new_session_token()
    now = utcnow()
    # Sessions nobody presents again are never looked up; drop the ones past their absolute end here.
    Session.delete().where(Session.expires_at <= now).execute()
    Session.create(
        token_hash=digest,
        user=user,
        created_at=now,
        last_seen_at=now,
        expires_at=now + ABSOLUTE_LIFETIME,
        ip=ip,
        user_agent=(user_agent or "")[:255],
    )
    return raw


def session_user(raw: str | None) -> User | None:
    """The User of a live session token, else None; expired sessions are deleted."""
    if not raw or len(raw) > 128:
        return None
    row = Session.select(Session, User).join(User).where(Session.token_hash == security.hash_token(raw)).first()
    if row is None:
        return None
    now = utcnow()
    if row.expires_at <= now or row.last_seen_at + IDLE_TIMEOUT <= now:
        Session.delete().where(Session.id == row.id).execute()
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        Session.update(last_seen_at=now).where(Session.id == row.id).execute()
    return row.user


def end_session(raw: str | None) -> None:
    """Delete the session behind `raw` (sign-out)."""
    if raw:
        Session.delete().where(Session.token_hash == security.hash_token(raw)).execute()


def end_all_sessions(user: User) -> int:
    """Delete every session of `user` (password change)."""
    return Session.delete().where(Session.user == user).execute()


def locked_until(email: str, ip: str | None, now: datetime | None = None) -> datetime | None:
    """When the email+IP lockout ends, or None: 5 failures within 15 min lock for 15 min after the 5th."""
    now = now or utcnow()
    since = now - FAILURE_WINDOW - LOCKOUT
    times = [
        row.created_at
        for row in LoginFailure.select(LoginFailure.created_at)
        .where(
            LoginFailure.email == normalize_email(email), LoginFailure.ip == (ip or ""), LoginFailure.created_at > since
        )
        .order_by(LoginFailure.created_at)
    ]
    until = None
    for i in range(len(times) - MAX_FAILURES + 1):
        if times[i + MAX_FAILURES - 1] - times[i] <= FAILURE_WINDOW:
            end = times[i + MAX_FAILURES - 1] + LOCKOUT
            if end > now and (until is None or end > until):
                until = end
    return until


@contextlib.contextmanager
def _attempt_lock(email: str, ip: str | None) -> Iterator[None]:
    """Serialise counting attempts for one email+address across requests and processes."""
    db = database.obj
    if is_mysql(db):
        # A named lock per email+address (64 chars max): two processes never count at once.
        name = "pulse_login_" + hashlib.sha256(f"{email}\0{ip}".encode()).hexdigest()[:40]
        got = db.execute_sql("SELECT GET_LOCK(%s, %s)", (name, ATTEMPT_LOCK_WAIT)).fetchone()[0]
        if got != 1:
            raise TimeoutError("sign-in attempt lock not taken")
        try:
            yield
        finally:
            db.execute_sql("SELECT RELEASE_LOCK(%s)", (name,))
    else:
        # BEGIN IMMEDIATE takes SQLite's write lock first: the count and the insert are one step.
        with db.atomic("IMMEDIATE"):
            yield


def begin_attempt(email: str, ip: str | None) -> int | None:
    """Count a sign-in attempt before its password is checked; its row id, or None when locked.

    The row counts as a failure from now on: failures plus attempts still in flight never exceed
    MAX_FAILURES per email+address in FAILURE_WINDOW, however many requests and processes race
    (SPEC 5). `finish_attempt` clears it on success; `cancel_attempt` when no password was checked.
    Call inside a db block, outside any transaction.
    """
    email, ip = normalize_email(email)[:254], (ip or "")[:64]
    now = utcnow()
    try:
        with _attempt_lock(email, ip):
            if locked_until(email, ip, now) is not None:
                return None
            row = LoginFailure.create(email=email, ip=ip, created_at=now)
    except TimeoutError:
        return None  # a pile-up on this one email+address: refusing is the safe answer
    # Old rows are useless to the lockout; prune them as we go.
    LoginFailure.delete().where(LoginFailure.created_at < now - FAILURE_WINDOW - LOCKOUT).execute()
    return row.id


def finish_attempt(email: str, ip: str | None, ok: bool) -> None:
    """After the check: success forgets the email+address's failures; a failure stays counted."""
    if ok:
        clear_failures(email, ip)


def cancel_attempt(attempt_id: int | None) -> None:
    """Un-count an attempt whose password was never checked (the bcrypt pool was full)."""
    LoginFailure.delete().where(LoginFailure.id == attempt_id).execute()


def clear_failures(email: str, ip: str | None) -> None:
    """A successful sign-in forgets earlier failures from the same email+IP."""
    LoginFailure.delete().where(
        LoginFailure.email == normalize_email(email)[:254], LoginFailure.ip == (ip or "")[:64]
    ).execute()


def password_problem(new: str, confirm: str) -> str | None:
    """A message when a new password is unacceptable (projects.validate_admin_password), else None."""
    try:
        projects.validate_admin_password(new, "The new password")
    except projects.Refused as exc:
        return str(exc)
    if new != confirm:
        return "The new password and its confirmation differ."
    return None


def set_password(user: User, new_hash: str) -> None:
    """Store a new bcrypt hash and end every session of the user."""
    with database.atomic():
        now = utcnow()
        User.update(password_hash=new_hash, password_changed_at=now).where(User.id == user.id).execute()
        end_all_sessions(user)
