"""Customer exports from the console: the API's streaming export (pulse.export), behind a session."""

import logging

import tornado.web
from tornado.iostream import StreamClosedError

from console.base import ProjectHandler
from console.dashboard import PID
from pulse import export
from pulse.db import DatabaseUnavailable

log = logging.getLogger("pulse.console")


class ExportHandler(ProjectHandler):
    section = "customers"

    async def get(self, project_id):
        fmt = self.get_query_argument("format", "csv")
        if fmt not in export.FORMATS:
            raise tornado.web.HTTPError(400, reason="Unknown export format: choose csv or json.")
        self.set_header("Content-Type", export.FORMATS[fmt])
        self.set_header("Content-Disposition", f'attachment; filename="{export.filename(self.project, fmt)}"')
        sent = False
        try:
            for chunk in export.chunks(self.project, fmt):
                self.write(chunk)
                await self.flush()  # one page in memory at a time; the loop serves others meanwhile
                sent = True
        except StreamClosedError:
            return
        except DatabaseUnavailable:
            if not sent:
                raise
            log.warning("console export interrupted: database unavailable")
            self.request.connection.stream.close()  # a truncated transfer, not a well-formed partial file
            return
        self.finish()


default_handlers = [
    (PID + r"/export", ExportHandler),
]
