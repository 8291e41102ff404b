"""GET /api/customers/export: every customer of the project with its current subscription, streamed."""

import asyncio
import logging

from tornado.iostream import StreamClosedError

from pulse import export
from pulse.db import DatabaseUnavailable

from handlers.base import ApiHandler, invalid

log = logging.getLogger("pulse.export")


# Excel reads a CSV without a byte order mark in the local code page: "Zoë" would show as "ZoÃ«".
BOM = "\ufeff"


async def stream(handler, project, fmt, bom=False):
    """Send `project`'s export in `fmt` through `handler` page by page (the API's and the console's download);
    with `bom`, a CSV starts with the UTF-8 byte order mark (for spreadsheets)."""
    handler.set_header("Content-Type", export.FORMATS[fmt])
    handler.set_header("Content-Disposition", f'attachment; filename="{export.filename(project, fmt)}"')
    sent = False
    try:
        for index, chunk in enumerate(export.chunks(project, fmt)):
            if index == 0 and bom and fmt == "csv":
                chunk = BOM + chunk
            handler.write(chunk)
            await handler.flush()  # one page at a time on the wire: memory stays at one page
            sent = True
            # A flush the socket takes at once is an already-done future, and awaiting it does
            # not yield: without this the whole export would run before any other request.
            await asyncio.sleep(0)
    except StreamClosedError:
        return  # the client went away: stop reading pages
    except DatabaseUnavailable:
        if not sent:
            raise
        # Headers and part of the body are out: cut the connection so the client sees a truncated
        # transfer instead of a well-formed but incomplete file.
        log.warning("export interrupted: database unavailable",
                    extra={"request_id": getattr(handler, "request_id", None)})
        handler.request.connection.stream.close()
        return
    handler.finish()


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
