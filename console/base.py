"""ConsoleHandler: the one base of every HTML page (templates, security headers, error pages)."""

import logging
import traceback

import tornado.web

from pulse.db import DatabaseUnavailable

log = logging.getLogger("pulse.console")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
ERROR_TITLES = {
    400: "Bad request", 403: "Forbidden", 404: "Page not found", 405: "Method not allowed",
    429: "Too many attempts", 500: "Something went wrong", 503: "Service unavailable",
}


class ConsoleHandler(tornado.web.RequestHandler):
    """Base of the HTML console and public pages."""

    @property
    def config(self):
        return self.settings["config"]

    def set_default_headers(self):
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    def template_context(self):
        """Values every template may use; subclasses add the user and project."""
        return {"request": self.request, "xsrf_form_html": self.xsrf_form_html,
                "static_url": self.static_url}

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
        log.error("unhandled %s at %s:%s", typ.__name__, where.filename if where else "?",
                  where.lineno if where else "?",
                  exc_info=(typ, value, tb) if log.isEnabledFor(logging.DEBUG) else None)

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


class ConsoleNotFoundHandler(ConsoleHandler):
    """Unknown console paths render the 404 page."""

    def prepare(self):
        raise tornado.web.HTTPError(404)
