"""ApiHandler: the one base of every JSON endpoint (auth, body, errors, request ids, logs)."""

import functools
import inspect
import json
import logging
import re
import secrets
import traceback

import tornado.web

import web
from handlers import inputs, limits
from pulse import apikeys, idempotency
from pulse.db import DatabaseUnavailable, block
from pulse.logs import redact

log = logging.getLogger("pulse.api")

MAX_BODY_BYTES = 1024 * 1024
# An oversize body up to this size is read and thrown away before the 413 goes out: closing on a
# client that is still sending makes its kernel discard our answer (a reset instead of a 413).
DRAIN_BYTES = MAX_BODY_BYTES * 64
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")

# Default code for each status we emit; handlers raise ApiError for a more specific one.
STATUS_CODES = {
    400: "invalid_field",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "missing_field",
    429: "rate_limited",
    500: "internal_error",
    502: "stripe_error",
    503: "service_unavailable",
}
MESSAGES = {
    401: "A valid API key is required in the X-API-Key header.",
    404: "No such endpoint.",
    405: "Method not allowed for this endpoint.",
    413: "Request body exceeds 1 MiB (1048576 bytes).",
    500: "Internal server error.",
    503: "Service unavailable.",
}


class ApiError(Exception):
    """An error answered with the SPEC 3.1 envelope."""

    def __init__(self, status, code, message, field=None, headers=None, extra=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.field, self.headers, self.extra = field, headers or {}, extra or {}


def missing(field):
    return ApiError(422, "missing_field", f"{field} is required", field=field)


def invalid(field, message):
    return ApiError(400, "invalid_field", message, field=field)


def request_id_for(request):
    """The client's X-Request-Id when it is sane, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else "req_" + secrets.token_hex(12)


def allowed_methods(handler_class):
    """Methods a handler class implements, for the Allow header of a 405."""
    base = tornado.web.RequestHandler
    return [
        m
        for m in handler_class.SUPPORTED_METHODS
        if getattr(handler_class, m.lower(), None) is not getattr(base, m.lower(), None)
    ]


@tornado.web.stream_request_body
class ApiHandler(tornado.web.RequestHandler):
    """Base of the JSON API: subclasses set `auth_required` and implement methods.

    A body over 1 MiB is drained, and reading it (raw_body, json_body) answers 413. POSTs that honour
    Idempotency-Key say so with @idempotent; finish() then stores the outcome for replays.
    """

    auth_required = True
    api_key = None
    project = None
    # Headers kept on every response of this request, error responses included (rate limits).
    sticky_headers = None
    _idempotency_record = None

    def initialize(self):
        self.request_id = request_id_for(self.request)
        self._chunks = []
        self._body_size = 0
        self._too_large = False
        self.error_code = None
        self.sticky_headers = {}

    @property
    def config(self):
        return self.settings["config"]

    def set_default_headers(self):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        for name, value in (self.sticky_headers or {}).items():
            self.set_header(name, value)

    def check_xsrf_cookie(self):
        """API clients authenticate with a key, not a cookie: no XSRF here."""

    async def prepare(self):
        self.set_header("X-Request-Id", self.request_id)
        # Allow up to the hard cap so an oversize body reaches data_received and gets our 413.
        self.request.connection.set_max_body_size(DRAIN_BYTES)
        length = inputs.declared_length(self.request.headers, huge=DRAIN_BYTES + 1)
        if length is not None and length > MAX_BODY_BYTES:
            expecting = self.request.headers.get("Expect", "").lower() == "100-continue"
            if expecting or length > DRAIN_BYTES:
                raise ApiError(413, "payload_too_large", MESSAGES[413])  # nothing sent yet, or too much to read
            self._too_large = True  # drained by data_received, answered when the method would run
            return
        auth_error = None
        if self.auth_required:
            try:
                self.authenticate()
            except ApiError as exc:
                auth_error = exc
        # Counted after the key check (per project, or per address when it failed), before anything else.
        await self.rate_limit()
        if auth_error is not None:
            raise auth_error

    async def rate_limit(self):
        """Count the request (handlers/limits.py); 429 rate_limited when over the limit."""
        decision = await limits.check(self)
        if decision is None:
            return
        self.sticky_headers.update(decision.headers())
        for name, value in decision.headers().items():
            self.set_header(name, value)
        if not decision.allowed:
            rate = limits.bucket(self)[1]
            raise ApiError(429, "rate_limited", f"Rate limit of {rate} exceeded; retry in {decision.retry_after} s.")

    def authenticate(self):
        """Resolve X-API-Key to its project or answer 401."""
        raw = self.request.headers.get("X-API-Key", "")
        with block():
            found = apikeys.authenticate(raw)
        if found is None:
            raise ApiError(401, "unauthorized", MESSAGES[401])
        self.api_key, self.project = found

    def data_received(self, chunk):
        if self._too_large:
            return
        self._body_size += len(chunk)
        if self._body_size > MAX_BODY_BYTES:
            # Chunked bodies have no Content-Length: keep only the verdict, drop the rest as it comes.
            self._too_large = True
            self._chunks = []
            return
        self._chunks.append(chunk)

    @property
    def raw_body(self):
        """The request body (bytes), or 413 when it was over 1 MiB (drained, not kept)."""
        if self._too_large:
            raise ApiError(413, "payload_too_large", MESSAGES[413])
        return b"".join(self._chunks)

    def json_body(self, allowed=None):
        """The request body as a JSON object, or 400 invalid_json; with `allowed` (field names), any other
        field is 400 invalid_field "unknown parameter: …", as Stripe answers."""
        raw = self.raw_body
        if not raw.strip():
            raise ApiError(400, "invalid_json", "Request body must be a JSON object.")
        try:
            data = inputs.loads(raw)
        except inputs.DuplicateKey as exc:
            shown = json.dumps(exc.args[0][:100])  # ASCII-escaped: a lone surrogate or control character prints
            raise ApiError(
                400, "invalid_json", f"Request body has a duplicate key {shown}: send each field once."
            ) from None
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
            raise ApiError(400, "invalid_json", "Request body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "Request body must be a JSON object.")
        if _SURROGATE_ESCAPE.search(raw):
            # "\udc00" alone is valid JSON but not text: it would blow up later in the database or Stripe.
            try:
                json.dumps(data, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "invalid_json", "Request body contains an unpaired \\u surrogate escape.") from None
        if allowed is not None:
            unknown = next((name for name in data if name not in allowed), None)
            if unknown is not None:
                shown = unknown if len(unknown) <= 100 else unknown[:100] + "…"
                raise invalid(shown, f"unknown parameter: {shown}")
        return data

    def decode_argument(self, value, name=None):
        """Path and query values as text; bytes that are not UTF-8 are 400 naming the argument (or `path`)."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            field = name or "path"
            raise invalid(field, f"{field} must be UTF-8") from None

    def query_arg(self, name):
        r"""The last `name` query parameter exactly as sent, or None.

        get_query_argument turns \x00-\x08 and \x0e-\x1f into spaces, so "john\x01smith" would read
        "john smith" (security review M4): ids are read with this, and refused if they hold control characters.
        """
        values = self.request.query_arguments.get(name)
        return self.decode_argument(values[-1], name) if values else None

    def query_int(self, name, default, low, high):
        """An integer query parameter in [low, high], ASCII digits only; `default` when absent, else 400 naming it."""
        raw = self.query_arg(name)
        if raw is None:
            return default
        value = web.ascii_int(raw)
        if value is None or not low <= value <= high:
            raise invalid(name, f"{name} must be an integer between {low} and {high}")
        return value

    def write_json(self, data, status=200):
        self.set_status(status)
        self.finish(json.dumps(data, separators=(",", ":"), ensure_ascii=False))

    def finish(self, chunk=None):
        if self._idempotency_record is not None and not self._finished:
            if chunk is not None:
                self.write(chunk)
                chunk = None
            self._remember_outcome(b"".join(self._write_buffer))
        return super().finish(chunk)

    def _remember_outcome(self, body):
        record_id, self._idempotency_record = self._idempotency_record, None
        try:
            with block():
                if self.get_status() >= 500:
                    idempotency.release(record_id)  # our failure: let the retry run again
                else:
                    idempotency.complete(record_id, self.get_status(), body.decode("utf-8"))
        except DatabaseUnavailable:
            log.warning("could not store the idempotent outcome", extra={"request_id": self.request_id})

    def _handle_request_exception(self, exc):
        if isinstance(exc, DatabaseUnavailable):
            exc = ApiError(503, "database_unavailable", "The database is unavailable; retry shortly.")
        if isinstance(exc, ApiError):
            if self._finished:
                return
            self.send_error(exc.status, exc_info=(type(exc), exc, None))
            return
        super()._handle_request_exception(exc)

    def log_exception(self, typ, value, tb):
        if isinstance(value, (ApiError, tornado.web.HTTPError)):
            return
        # One line, no traceback text: exception messages can carry data we must not log.
        where = traceback.extract_tb(tb)[-1] if tb else None
        log.error(
            "unhandled %s at %s:%s",
            typ.__name__,
            where.filename if where else "?",
            where.lineno if where else "?",
            extra={"request_id": self.request_id},
            exc_info=(typ, value, tb) if log.isEnabledFor(logging.DEBUG) else None,
        )

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            status, code, message, field = exc.status, exc.code, exc.message, exc.field
            for name, value in exc.headers.items():
                self.set_header(name, value)
            extra = exc.extra
        else:
            status = status_code
            code = STATUS_CODES.get(status, "internal_error" if status >= 500 else "invalid_field")
            message = (
                MESSAGES.get(status) or (isinstance(exc, tornado.web.HTTPError) and exc.log_message) or self._reason
            )
            field, extra = None, {}
            if status == 405:
                self.set_header("Allow", ", ".join(allowed_methods(type(self))))
        self.error_code = code
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("X-Request-Id", self.request_id)
        error = {"status": status, "code": code, "message": message}
        if field:
            error["field"] = field
        error.update(extra)
        self.finish(json.dumps({"error": error}, ensure_ascii=False))


IDEMPOTENCY_MESSAGES = {
    "mismatch": "This Idempotency-Key was already used on this endpoint with a different request body;"
    " send a new key for a new request.",
    "other_endpoint": "This Idempotency-Key was already used on a different endpoint (method and path);"
    " send a new key for each request.",
    "in_flight": "A request with this Idempotency-Key is still being processed; retry once it completes.",
}


def idempotent(method):
    """Decorate an authenticated POST: replay the stored outcome for a known Idempotency-Key (SPEC 3.1)."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        key = self.request.headers.get("Idempotency-Key")
        if key is None or self.project is None or self._idempotency_record is not None:
            # No key, no project, or an overriding post() already claimed the key via super().
            return await _maybe_await(method(self, *args, **kwargs))
        if not idempotency.valid_key(key):
            raise invalid("Idempotency-Key", "Idempotency-Key must be 1-255 printable ASCII characters.")
        fingerprint = idempotency.request_hash(self.request.method, self.request.path, self.raw_body)
        with block():
            outcome = idempotency.begin(self.project, key, fingerprint)
        if outcome.action == "conflict":
            raise ApiError(409, "idempotency_conflict", IDEMPOTENCY_MESSAGES[outcome.reason])
        if outcome.action == "replay":
            self.set_header("Idempotent-Replayed", "true")
            self.set_status(outcome.status_code)
            self.finish(outcome.body)
            return None
        # finish() stores whatever this request answers, error envelopes included.
        self._idempotency_record = outcome.record_id
        return await _maybe_await(method(self, *args, **kwargs))

    return wrapper


async def _maybe_await(result):
    return await result if inspect.isawaitable(result) else result


class NotFoundHandler(ApiHandler):
    """Every unknown path: 404 in the envelope, whatever the method."""

    auth_required = False
    SUPPORTED_METHODS = ApiHandler.SUPPORTED_METHODS

    def prepare(self):
        self.set_header("X-Request-Id", self.request_id)
        raise ApiError(404, "not_found", MESSAGES[404])


def log_request(handler):
    """Tornado's log_function: one structured line per request (client text redacted at the source)."""
    status = handler.get_status()
    level = logging.INFO if status < 500 else logging.ERROR
    project = getattr(handler, "project", None)
    path = redact(handler.request.path)
    request_id = getattr(handler, "request_id", None)
    logging.getLogger("pulse.access").log(
        level,
        "%s %s %s",
        handler.request.method,
        path,
        status,
        extra={
            "request_id": redact(request_id) if request_id else None,
            "method": handler.request.method,
            "path": path,
            "status": status,
            "duration_ms": round(handler.request.request_time() * 1000, 2),
            "ip": web.client_ip(handler.request, handler.settings["config"])
            if "config" in handler.settings
            else handler.request.remote_ip,
            "project": getattr(project, "public_id", None),
            "code": getattr(handler, "error_code", None),
        },
    )
