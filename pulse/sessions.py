"""Console sign-in: server-side sessions, the login lockout and password changes (web-free)."""

from datetime import timedelta

from pulse import security
from pulse.db import database, utcnow
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
MIN_PASSWORD_LENGTH = 10


def find_user(email):
    """The account for `email` (case-insensitive), or None. Call inside a db block."""
    return User.get_or_none(User.email == normalize_email(email))


def create_session(user, ip=None, user_agent=""):
    """Start a session for `user`; returns the raw token for the cookie (only its hash is stored)."""
    raw, digest = security.new_session_token()
    now = utcnow()
    # Sessions nobody presents again are never looked up; drop the ones past their absolute end here.
    Session.delete().where(Session.expires_at <= now).execute()
    Session.create(token_hash=digest, user=user, created_at=now, last_seen_at=now,
                   expires_at=now + ABSOLUTE_LIFETIME, ip=ip, user_agent=(user_agent or "")[:255])
    return raw


def session_user(raw):
    """The User of a live session token, else None; expired sessions are deleted."""
    if not raw or len(raw) > 128:
        return None
    row = (Session.select(Session, User).join(User)
           .where(Session.token_hash == security.hash_token(raw)).first())
    if row is None:
        return None
    now = utcnow()
    if row.expires_at <= now or row.last_seen_at + IDLE_TIMEOUT <= now:
        Session.delete().where(Session.id == row.id).execute()
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        Session.update(last_seen_at=now).where(Session.id == row.id).execute()
    return row.user


def end_session(raw):
    """Delete the session behind `raw` (sign-out)."""
    if raw:
        Session.delete().where(Session.token_hash == security.hash_token(raw)).execute()


def end_all_sessions(user):
    """Delete every session of `user` (password change)."""
    return Session.delete().where(Session.user == user).execute()


def locked_until(email, ip, now=None):
    """When the email+IP lockout ends, or None: 5 failures within 15 min lock for 15 min after the 5th."""
    now = now or utcnow()
    since = now - FAILURE_WINDOW - LOCKOUT
    times = [row.created_at for row in LoginFailure.select(LoginFailure.created_at)
             .where(LoginFailure.email == normalize_email(email), LoginFailure.ip == (ip or ""),
                    LoginFailure.created_at > since)
             .order_by(LoginFailure.created_at)]
    until = None
    for i in range(len(times) - MAX_FAILURES + 1):
        if times[i + MAX_FAILURES - 1] - times[i] <= FAILURE_WINDOW:
            end = times[i + MAX_FAILURES - 1] + LOCKOUT
            if end > now and (until is None or end > until):
                until = end
    return until


def record_failure(email, ip):
    """Count a failed sign-in for email+IP (unknown emails too, so probing is throttled alike)."""
    now = utcnow()
    LoginFailure.create(email=normalize_email(email)[:254], ip=(ip or "")[:64], created_at=now)
    # Old rows are useless to the lockout; prune them as we go.
    LoginFailure.delete().where(LoginFailure.created_at < now - FAILURE_WINDOW - LOCKOUT).execute()


def clear_failures(email, ip):
    """A successful sign-in forgets earlier failures from the same email+IP."""
    LoginFailure.delete().where(LoginFailure.email == normalize_email(email),
                                LoginFailure.ip == (ip or "")).execute()


def password_problem(new, confirm):
    """A message when a new password is unacceptable, else None."""
    if len(new) < MIN_PASSWORD_LENGTH:
        return f"The new password must be at least {MIN_PASSWORD_LENGTH} characters."
    if len(new.encode("utf-8")) > 72:
        return "The new password must be at most 72 bytes."
    if new != confirm:
        return "The new password and its confirmation differ."
    return None


def set_password(user, new_hash):
    """Store a new bcrypt hash and end every session of the user."""
    with database.atomic():
        now = utcnow()
        User.update(password_hash=new_hash, password_changed_at=now).where(User.id == user.id).execute()
        end_all_sessions(user)
