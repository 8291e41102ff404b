"""Customer exports from the console: the API's streaming export, behind a session."""

import tornado.web

from console.base import PID, ProjectHandler
from pulse import export
from web import stream


class ExportHandler(ProjectHandler):
    section = "customers"

    async def get(self, project_id):
        fmt = self.get_query_argument("format", "csv")
        if fmt not in export.FORMATS:
            raise tornado.web.HTTPError(400, reason="Unknown export format: choose csv or json.")
        await stream(self, self.project, fmt, bom=True)  # downloads open in spreadsheets


default_handlers = [
    (PID + r"/export", ExportHandler),
]
