"""Customer exports from the console: CSV or JSON, streamed page by page."""

import tornado.web

from console.base import ProjectHandler
from console.dashboard import PID
from pulse import console_export
from pulse.db import utcnow

FORMATS = {"csv": ("text/csv; charset=utf-8", console_export.csv_chunks),
           "json": ("application/json; charset=utf-8", console_export.json_chunks)}


class ExportHandler(ProjectHandler):
    section = "customers"

    async def get(self, project_id):
        fmt = self.get_query_argument("format", "csv")
        if fmt not in FORMATS:
            raise tornado.web.HTTPError(400, reason="Unknown export format: choose csv or json.")
        content_type, chunks = FORMATS[fmt]
        name = f"customers-{self.project.public_id}-{utcnow():%Y-%m-%d}.{fmt}"
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        # Each chunk is read in its own short db block; flushing between them keeps memory flat
        # and lets the loop serve other requests.
        for chunk in chunks(self.project):
            self.write(chunk)
            await self.flush()
        self.finish()


default_handlers = [
    (PID + r"/export", ExportHandler),
]
