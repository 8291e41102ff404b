"""GET /status: the public service status page."""

from console.base import ConsoleHandler
from pulse import __version__
from web import database_ok


class StatusPageHandler(ConsoleHandler):
    def get(self):
        ok = database_ok()
        self.render_page("status.html", status=200 if ok else 503, ok=ok, version=__version__)


default_handlers = [
    (r"/status", StatusPageHandler),
]
