"""Static assets (/static/): Tornado's StaticFileHandler, minus the 500 on impossible paths."""

import tornado.web


class StaticFiles(tornado.web.StaticFileHandler):
    """A path no file can have (a NUL byte) is a 404, not a ValueError and a 500 (security review L2)."""

    def validate_absolute_path(self, root, absolute_path):
        if "\x00" in absolute_path:
            raise tornado.web.HTTPError(404)
        return super().validate_absolute_path(root, absolute_path)
