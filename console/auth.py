"""Sign-in, sign-out, the account page and the console's front door."""

import logging

from tornado.ioloop import IOLoop

from console.base import SESSION_COOKIE, ConsoleHandler, SignedInHandler, safe_next
from pulse import projects, security, sessions
from pulse.db import block

log = logging.getLogger("pulse.console")

FAILED = "Incorrect email or password."
LOCKED = "Too many failed sign-ins. Try again in 15 minutes."


async def check_off_loop(password, hashed):
    """bcrypt is slow on purpose: run it in the default executor, never on the event loop."""
    return await IOLoop.current().run_in_executor(None, security.check_password, password, hashed)


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
        with block():
            locked = sessions.locked_until(email, ip) is not None
            user = None if locked else sessions.find_user(email)
        if locked:
            self.render_page("login.html", status=429, email=email, error=LOCKED, next=target)
            return
        # Unknown emails are checked against a dummy hash so the answer takes as long.
        ok = await check_off_loop(password, user.password_hash if user else security.dummy_password_hash())
        if not ok or user is None:
            with block():
                sessions.record_failure(email, ip)
                locked = sessions.locked_until(email, ip) is not None
                if user is not None:
                    projects.audit("console.sign_in_failed", user=user, ip=ip)
            log.info("console sign-in failed")
            self.render_page("login.html", status=429 if locked else 401, email=email,
                             error=LOCKED if locked else FAILED, next=target)
            return
        with block():
            sessions.clear_failures(email, ip)
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
        if not await check_off_loop(current, user.password_hash):
            self.render_page("account.html", status=400, error="The current password is not correct.")
            return
        problem = sessions.password_problem(new, confirm)
        if problem:
            self.render_page("account.html", status=400, error=problem)
            return
        new_hash = await IOLoop.current().run_in_executor(None, security.hash_password, new)
        with block():
            sessions.set_password(user, new_hash)
            projects.audit("console.password_changed", user=user, ip=self.client_ip)
        self.clear_cookie(SESSION_COOKIE, path="/")
        self.redirect("/console/login?notice=password_changed")


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
