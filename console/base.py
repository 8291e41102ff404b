"""ConsoleHandler: the one base of every HTML page (templates, security headers, error pages)."""

import binascii
import hashlib
import hmac
import logging
import os
import time
import traceback
from datetime import datetime
from urllib.parse import quote, urlencode

import jinja2
import tornado.web
from markupsafe import Markup, escape

import web
from pulse import projects, sessions
from pulse.currency import format_amount
from pulse.db import DatabaseUnavailable, block, isoformat, utcnow

log = logging.getLogger("pulse.console")

PID = r"/console/p/(proj_[0-9A-Za-z]+)"  # the project part of every project page's route

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
ERROR_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Page not found",
    405: "Method not allowed",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "Service unavailable",
}


SESSION_COOKIE = "pulse_session"
XSRF_COOKIE = "_xsrf"
# Flash messages are chosen by key from this table, so a URL cannot inject text into a page.
NOTICES = {
    "key_revoked": "The API key was revoked.",
    "stripe_saved": "Stripe settings saved.",
    "policy_saved": "Past-due access policy saved.",
    "paused_policy_saved": "Paused-collection access policy saved.",
    "reapplied": "The event was applied again.",
    "signed_out": "You are signed out.",
    "password_changed": "Password changed. Every session was ended; sign in with the new password.",
}


def relative(value, now=None):
    """'3 minutes ago' / 'in 2 days' for a naive-UTC datetime."""
    seconds = int(((now or utcnow()) - value).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    if seconds < 45:
        return "just now"
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = round(seconds / size) if unit != "year" else seconds // size
            text = f"{n} {unit}{'' if n == 1 else 's'}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def timestamp(value, seconds=False):
    """Every console timestamp: `2026-11-30 14:07 UTC` (seconds on request), machine time and relative time
    in the tag. `value` is a naive-UTC datetime or its ISO form (`…Z`); None renders a dash."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.removesuffix("Z"))
        except ValueError:
            return escape(value)
    if value is None:
        return Markup('<span class="muted">—</span>')
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None) - value.utcoffset()
    shown = value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return Markup('<time datetime="{}" title="{}">{} UTC</time>').format(isoformat(value), relative(value), shown)


def make_jinja_env(template_dir):
    """The console's Jinja environment: autoescaped, strict, with `timestamp` and `format_amount` everywhere."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(timestamp=timestamp, format_amount=format_amount)
    return env


def safe_next(target, default="/console/"):
    """`target` when it is a local path (one leading `/`, no scheme or host), else `default`."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    if any(ch in target for ch in "\\\r\n\t") or any(ord(ch) < 32 or ord(ch) == 127 for ch in target):
        return default  # DEL too: Tornado refuses it in a Location header (a 500, security review L2)
    return target


# Row ids are signed 64-bit: a larger cursor or id overflowed SQLite's driver (a 500, security review L2).
MAX_ID = 2**63 - 1


def customer_path(project_public_id, external_user_id):
    """The console URL of a customer page, for any external id (L12).

    Ids are percent-encoded whole (`/`, `\\`, `?`, `#`, `%` included). Browsers collapse the
    segments `.` and `..` (encoded or not), so those two ids go in the query: `…/customers/?id=..`.
    """
    base = f"/console/p/{project_public_id}/customers/"
    if external_user_id in (".", ".."):
        return base + "?" + urlencode({"id": external_user_id})
    return base + quote(external_user_id, safe="")


class ConsoleHandler(tornado.web.RequestHandler):
    """Base of the HTML console and public pages; set `login_required` for signed-in pages."""

    login_required = False

    @property
    def config(self):
        return self.settings["config"]

    @property
    def box(self):
        return self.settings["secret_box"]

    @property
    def client_ip(self):
        """The client's address (X-Forwarded-For only behind a trusted proxy): lockout and audit key."""
        return web.client_ip(self.request, self.config)[:64]

    @property
    def over_https(self):
        return web.over_https(self.request, self.config)

    def get_current_user(self):
        raw = self.get_cookie(SESSION_COOKIE)
        if not raw:
            return None
        with block():
            return sessions.session_user(raw)

    def prepare(self):
        if self.login_required and self.current_user is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect("/console/login?" + urlencode({"next": self.request.uri}))
                return
            raise tornado.web.HTTPError(403, reason="Your session has ended. Sign in again.")

    def start_session(self, user):
        """Sign `user` in on this browser with a fresh server-side session (and a new XSRF token)."""
        with block():
            raw = sessions.create_session(
                user, ip=self.client_ip, user_agent=self.request.headers.get("User-Agent", "")
            )
        self.set_cookie(
            SESSION_COOKIE,
            raw,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.over_https,
            expires_days=sessions.ABSOLUTE_LIFETIME.total_seconds() / 86400,
        )
        self._new_session = raw
        for cached in ("_raw_xsrf_token", "_xsrf_token"):
            self.__dict__.pop(cached, None)
        self._set_xsrf_cookie(self.xsrf_token)  # rotated at sign-in: a planted _xsrf is worth nothing now

    # XSRF (L11). Signed in, the token is an HMAC of the session token: it changes at every sign-in,
    # and a cookie planted over plain HTTP or from a sibling domain cannot match it. Signed out (the
    # login form), Tornado's double-submit cookie, made Secure over HTTPS.

    def _session_xsrf_token(self):
        raw = getattr(self, "_new_session", None)
        if raw is None:
            raw = self.get_cookie(SESSION_COOKIE) if self.current_user is not None else None
        if not raw:
            return None
        key = ("xsrf-session:" + str(self.settings["cookie_secret"])).encode()
        return hmac.new(key, raw.encode(), hashlib.sha256).digest()[:16]

    def _get_raw_xsrf_token(self):
        if not hasattr(self, "_raw_xsrf_token"):
            bound = self._session_xsrf_token()
            if bound is None:
                return super()._get_raw_xsrf_token()
            self._raw_xsrf_token = (2, bound, time.time())
        return self._raw_xsrf_token

    @property
    def xsrf_token(self):
        """A masked (v2) token for forms; sets the _xsrf cookie when the token is new."""
        if not hasattr(self, "_xsrf_token"):
            version, token, timestamp = self._get_raw_xsrf_token()
            mask = os.urandom(4)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(token))
            self._xsrf_token = b"|".join(
                [b"2", binascii.b2a_hex(mask), binascii.b2a_hex(masked), str(int(timestamp)).encode()]
            )
            if version is None:
                self._set_xsrf_cookie(self._xsrf_token)
        return self._xsrf_token

    def _set_xsrf_cookie(self, value):
        self.set_cookie(XSRF_COOKIE, value, path="/", httponly=True, samesite="Lax", secure=self.over_https)

    def end_session(self):
        raw = self.get_cookie(SESSION_COOKIE)
        if raw:
            with block():
                sessions.end_session(raw)
        self.clear_cookie(SESSION_COOKIE, path="/")

    def audit(self, action, project=None, **detail):
        """Record a console action by the signed-in user (inside the caller's db block)."""
        projects.audit(action, project=project, user=self.current_user, ip=self.client_ip, **detail)

    def set_default_headers(self):
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    def template_context(self):
        """Values every template may use: the user, the switcher's projects, the current project, a notice."""
        notice = NOTICES.get(self.get_query_argument("notice", ""), "")
        try:
            user = self.current_user
        except DatabaseUnavailable:
            user = None  # the 503 and status pages still render while the database is down
        nav = getattr(self, "nav_projects", None)
        if nav is None and user is not None:  # public and 404 pages: the switcher still lists the projects
            try:
                with block():
                    nav = self.nav_projects = projects.projects_of(user)
            except DatabaseUnavailable:
                nav = []
        return {
            "request": self.request,
            "xsrf_form_html": self.xsrf_form_html,
            "static_url": self.static_url,
            "current_user": user,
            "nav_projects": nav or [],
            "project": getattr(self, "project", None),
            "section": getattr(self, "section", ""),
            "notice": notice,
            "iso": isoformat,
            "customer_path": customer_path,
        }

    def render_page(self, name, status=200, **context):
        template = self.settings["jinja_env"].get_template(name)
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(template.render(**self.template_context(), **context))

    def _handle_request_exception(self, exc):
        if isinstance(exc, DatabaseUnavailable):
            exc = tornado.web.HTTPError(503)
        super()._handle_request_exception(exc)

    def log_exception(self, typ, value, tb):
        if isinstance(value, tornado.web.HTTPError):
            return
        where = traceback.extract_tb(tb)[-1] if tb else None
        log.error(
            "unhandled %s at %s:%s",
            typ.__name__,
            where.filename if where else "?",
            where.lineno if where else "?",
            exc_info=(typ, value, tb) if log.isEnabledFor(logging.DEBUG) else None,
        )

    def write_error(self, status_code, **kwargs):
        title = ERROR_TITLES.get(status_code, "Error")
        exc = kwargs.get("exc_info", (None, None, None))[1]
        # Only messages we wrote ourselves (HTTPError reason) are shown, never exception text.
        detail = exc.reason if isinstance(exc, tornado.web.HTTPError) and exc.reason else ""
        try:
            self.render_page("error.html", status=status_code, title=title, code=status_code, detail=detail)
        except Exception:
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.finish(f"{status_code} {title}\n")


class SignedInHandler(ConsoleHandler):
    """A page for signed-in users; loads the project list for the switcher."""

    login_required = True

    def prepare(self):
        super().prepare()
        if self._finished:
            return
        with block():
            self.nav_projects = projects.projects_of(self.current_user)


class ProjectHandler(SignedInHandler):
    """A page under /console/p/{project_id}/: unknown project -> 404, non-member -> 403."""

    section = ""

    def prepare(self):
        super().prepare()
        if self._finished:
            return
        public_id = self.path_args[0] if self.path_args else self.path_kwargs.get("project_id")
        with block():
            try:
                project = projects.get_project(public_id)
            except projects.NotFound:
                raise tornado.web.HTTPError(404) from None
            if not projects.is_member(self.current_user, project):
                raise tornado.web.HTTPError(403, reason="You are not a member of this project.")
        self.project = project  # only once membership is proven, so error pages never show it

    def project_url(self, suffix=""):
        return f"/console/p/{self.project.public_id}/{suffix}"

    def webhook_url(self):
        """The project's webhook endpoint as Stripe must be told it (scheme and host of this request)."""
        scheme = "https" if self.over_https else "http"
        return f"{scheme}://{self.request.host}/api/webhook/{self.project.public_id}"

    def cursor_arg(self, name):
        """A page cursor from the query string: a row id in [0, MAX_ID], 0 when absent or not ASCII digits."""
        raw = self.get_query_argument(name, "")
        value = web.ascii_int(raw)
        if value is None:
            return MAX_ID if raw.isascii() and raw.isdigit() else 0  # 19+ digits: past every row
        return min(value, MAX_ID)


class ConsoleNotFoundHandler(ConsoleHandler):
    """Unknown console paths render the 404 page."""

    def prepare(self):
        raise tornado.web.HTTPError(404)

    def check_xsrf_cookie(self):
        pass  # a 404 for unknown paths, whatever the method
