"""GET /api/health: liveness and database reachability, no auth."""

from handlers.base import ApiHandler
from pulse import __version__
from web import database_ok


def prefers_html(accept):
    """True when an Accept header ranks text/html above application/json."""
    best = {"html": -1.0, "json": -1.0}
    for part in (accept or "").split(","):
        media, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.strip().lower()
        if media == "text/html":
            best["html"] = max(best["html"], quality)
        elif media in ("application/json", "application/*"):
            best["json"] = max(best["json"], quality)
    return best["html"] > 0 and best["html"] > best["json"]


class HealthHandler(ApiHandler):
    auth_required = False

    def get(self):
        if prefers_html(self.request.headers.get("Accept")):
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.redirect(self.config.status_page_url)
            return
        if database_ok():
            self.write_json({"status": "ok", "database": "ok", "version": __version__})
        else:
            self.write_json({"status": "unavailable", "database": "error", "version": __version__}, 503)

    def head(self):
        self.set_status(200 if database_ok() else 503)
        self.finish()


default_handlers = [
    (r"/api/health", HealthHandler),
]
