"""GET /api/customers/export: every customer of the project with its current subscription, streamed."""

from handlers.base import ApiHandler, invalid
from pulse import export
from web import stream


class ExportHandler(ApiHandler):
    async def get(self):
        fmt = self.get_query_argument("format", "json")
        if fmt not in export.FORMATS:
            raise invalid("format", "format must be json or csv")
        bom = self.get_query_argument("bom", "false")
        if bom not in ("true", "false"):
            raise invalid("bom", "bom must be true or false")
        await stream(self, self.project, fmt, bom=bom == "true")


default_handlers = [
    (r"/api/customers/export", ExportHandler),
]
