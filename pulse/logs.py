"""Structured logging: one JSON object per line, never secrets."""

import json
import logging
import re
import sys
import time
from typing import TextIO

# Anything shaped like a secret is cut from every log line, whatever logged it. No \b before the
# prefix ("x" + key in a malformed header is still a key), and "_" may arrive as %5F in a raw path.
_US = r"(?:_|%5[Ff])"
_SECRET = re.compile(
    rf"(pp{_US}(?:live|test){_US}|[sr]k{_US}(?:live|test){_US}|whsec{_US})(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{{2}})+"
)


def redact(text: str) -> str:
    """Replace secret-shaped substrings with their kind and an ellipsis."""
    return _SECRET.sub(lambda m: m.group(1) + "…", text)


def _redacted(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class JsonFormatter(logging.Formatter):
    """Render records as single-line JSON with the request fields attached by handlers."""

    FIELDS = ("request_id", "method", "path", "status", "duration_ms", "ip", "project", "code", "event_id")

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": _redacted(record.name),
            "msg": redact(record.getMessage()),
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = _redacted(value)  # path, request id...: client text like any other
        if record.exc_info and record.levelno <= logging.DEBUG:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Install the JSON formatter on the root logger at `level`."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Tornado's own access log is replaced by ours.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    for noisy in ("stripe", "httpx", "httpcore", "peewee"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
