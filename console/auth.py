"""Sign-in, sign-out, the account page and the console's front door."""

import logging

import tornado.web

from console.base import ConsoleHandler, SignedInHandler, safe_next
from pulse import projects, security, sessions
from pulse.config import RateLimit
from pulse.db import block
from pulse.ratelimit import address_bucket

log = logging.getLogger("pulse.console")

FAILED = "Incorrect email or password."
LOCKED = "Too many failed sign-ins. Try again in 15 minutes."
BUSY = "Too many sign-ins are being checked right now. Try again in a few seconds."
# Sign-in attempts per client address, whatever the email (M2): on top of the per-email lockout,
# so one address cannot keep bcrypt busy with made-up emails. People sign in a few times a day.
LOGIN_RATE = RateLimit(10, 60)
BUSY_RETRY_AFTER = 5


async def check_password(handler, password, hashed, reserved):
    """bcrypt on the app's bounded pool, never on the event loop; None when the pool is full."""
    try:
        return await handler.settings["bcrypt_pool"].check(password, hashed, reserved=reserved)
    except security.PoolBusy:
        return None


class LoginHandler(ConsoleHandler):
    def get(self):
        if self.current_user is not None:
            self.redirect(safe_next(self.get_query_argument("next", "")))
            return
        self.render_page("login.html", email="", error="", next=safe_next(self.get_query_argument("next", ""), ""))

    async def post(self):
        email = projects.normalize_email(self.get_body_argument("email", ""))[:254]
        password = self.get_body_argument("password", "")
        target = safe_next(self.get_body_argument("next", ""))
        ip = self.client_ip
        # One IPv6 host owns a whole /64: counting per address would give it 2**64 lockout budgets.
        bucket = address_bucket(ip)

        def page(status, error):
            self.render_page("login.html", status=status, email=email, error=error, next=target)

        decision = await self.settings["rate_limiter"].hit("console-login:" + bucket, LOGIN_RATE)
        if not decision.allowed:
            self.set_header("Retry-After", str(decision.retry_after))
            page(429, f"Too many sign-in attempts from your address. Try again in {decision.retry_after} s.")
            return
        with block():
            # Counted before bcrypt runs: concurrent guesses cannot get past the 5-failure lock (H1).
            attempt = sessions.begin_attempt(email, bucket)
            user = None if attempt is None else sessions.find_user(email)
        if attempt is None:
            page(429, LOCKED)
            return
        # Unknown emails are checked against a dummy hash so the answer takes as long.
        ok = await check_password(
            self, password, user.password_hash if user else security.dummy_password_hash(), reserved=user is not None
        )
        if ok is None:
            with block():
                sessions.cancel_attempt(attempt)
            self.set_header("Retry-After", str(BUSY_RETRY_AFTER))
            page(503, BUSY)
            return
        if not ok or user is None:
            with block():
                locked = sessions.locked_until(email, bucket) is not None
                if user is not None:
                    projects.audit("console.sign_in_failed", user=user, ip=ip)
            log.info("console sign-in failed")
            page(429 if locked else 401, LOCKED if locked else FAILED)
            return
        with block():
            sessions.finish_attempt(email, bucket, ok=True)
            projects.audit("console.signed_in", user=user, ip=ip)
        self.end_session()  # a session cookie from before never carries over into this sign-in
        self.start_session(user)
        self.redirect(target)


class LogoutHandler(ConsoleHandler):
    def post(self):
        user = self.current_user
        if user is not None:
            with block():
                projects.audit("console.signed_out", user=user, ip=self.client_ip)
        self.end_session()
        self.redirect("/console/login?notice=signed_out")


class AccountHandler(SignedInHandler):
    def get(self):
        self.render_page("account.html", error="")

    async def post(self):
        current = self.get_body_argument("current_password", "")
        new = self.get_body_argument("new_password", "")
        confirm = self.get_body_argument("confirm_password", "")
        user = self.current_user
        # The current-password check is a password oracle for whoever holds a session: it gets the
        # sign-in lockout too, per account (any address), and a locked check ends this session.
        scope_key = user.email_key or user.email
        with block():
            attempt = sessions.begin_attempt(scope_key, sessions.ACCOUNT_SCOPE)
        if attempt is None:
            self._lock_out(user)
            return
        ok = await check_password(self, current, user.password_hash, reserved=True)
        if ok is None:
            with block():
                sessions.cancel_attempt(attempt)
            self.set_header("Retry-After", str(BUSY_RETRY_AFTER))
            self.render_page("account.html", status=503, error=BUSY)
            return
        if not ok:
            with block():
                locked = sessions.locked_until(scope_key, sessions.ACCOUNT_SCOPE) is not None
                projects.audit("console.password_check_failed", user=user, ip=self.client_ip)
            if locked:
                self._lock_out(user)
            else:
                self.render_page("account.html", status=400, error="The current password is not correct.")
            return
        with block():
            sessions.finish_attempt(scope_key, sessions.ACCOUNT_SCOPE, ok=True)
        problem = sessions.password_problem(new, confirm)
        if problem:
            self.render_page("account.html", status=400, error=problem)
            return
        try:
            new_hash = await self.settings["bcrypt_pool"].hash(new)
        except security.PoolBusy:
            self.set_header("Retry-After", str(BUSY_RETRY_AFTER))
            self.render_page("account.html", status=503, error=BUSY)
            return
        with block():
            sessions.set_password(user, new_hash)
            projects.audit("console.password_changed", user=user, ip=self.client_ip)
        self.end_session()
        self.redirect("/console/login?notice=password_changed")

    def _lock_out(self, user):
        with block():
            projects.audit("console.password_check_locked", user=user, ip=self.client_ip)
        self.end_session()
        raise tornado.web.HTTPError(
            429,
            reason="Too many wrong current passwords: you are signed out, and "
            "the password can be changed again in 15 minutes.",
        )


class IndexHandler(SignedInHandler):
    """/console/: straight to the only project, else the list."""

    def get(self):
        if len(self.nav_projects) == 1:
            self.redirect(f"/console/p/{self.nav_projects[0].public_id}/")
            return
        self.render_page("projects.html")


class ConsoleRootRedirect(ConsoleHandler):
    def get(self):
        self.redirect("/console/")


default_handlers = [
    (r"/console", ConsoleRootRedirect),
    (r"/console/", IndexHandler),
    (r"/console/login", LoginHandler),
    (r"/console/logout", LogoutHandler),
    (r"/console/account", AccountHandler),
]
