"""Structured logging: one JSON object per line, never secrets."""

import json
import logging
import re
import sys
import time

# Anything shaped like a secret is cut from every log line, whatever logged it.
_SECRET = re.compile(r"\b(pp_live_|pp_test_|sk_live_|sk_test_|rk_live_|rk_test_|whsec_)[A-Za-z0-9_]+")


def redact(text):
    """Replace secret-shaped substrings with their kind and an ellipsis."""
    return _SECRET.sub(lambda m: m.group(1) + "…", text)


class JsonFormatter(logging.Formatter):
    """Render records as single-line JSON with the request fields attached by handlers."""

    FIELDS = ("request_id", "method", "path", "status", "duration_ms", "ip", "project", "code", "event_id")

    def format(self, record):
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.levelno <= logging.DEBUG:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level="info", stream=None):
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
