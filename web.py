"""What handlers/ (the JSON API) and console/ share: client address, HTTPS, export streaming, db health."""

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import signal

import tornado.web
from tornado.iostream import PipeIOStream, StreamClosedError

from pulse import export, exportproc
from pulse.db import DatabaseUnavailable, block

log = logging.getLogger("pulse.web")


HSTS = "max-age=31536000; includeSubDomains"
# Any of these means a proxy stands between us and the client: loopback is then not the client.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Real-Ip", "X-Scheme", "Forwarded")


_DIGITS = re.compile(r"[0-9]{1,18}")


def ascii_int(text):
    """`text` as an int when it is 1-18 ASCII digits, else None.

    int() and str.isdigit() also take "²", "٣", " 7" and "1_0": client numbers are read with this only.
    """
    return int(text) if isinstance(text, str) and _DIGITS.fullmatch(text) else None


def _last(value):
    """The right-most entry of a comma list: the one our own proxy appended."""
    return value.split(",")[-1].strip()


def _address(text):
    """An ip_address (IPv4-mapped IPv6 as IPv4), or None for anything else."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def _is_trusted_proxy(address, config):
    return address is not None and any(address in network for network in config.trusted_proxies)


def _from_trusted_proxy(request, config):
    """True when forwarding headers may be believed: trust is on and the TCP peer is a listed proxy."""
    return bool(config.trust_proxy) and _is_trusted_proxy(_address(request.remote_ip or ""), config)


_warned_peers = set()


def _warn_untrusted_peer(peer):
    """Say once per peer why its X-Forwarded-For is ignored: a proxy missing from the list is a config slip."""
    if peer not in _warned_peers and len(_warned_peers) < 100:
        _warned_peers.add(peer)
        log.warning("X-Forwarded-For from %s ignored: not in PULSE_TRUSTED_PROXIES", peer)


def client_ip(request, config):
    """The one client address used by rate limits, lockout, audit, the access log and webhook records.

    Without PULSE_TRUST_PROXY, or when the TCP peer is not in PULSE_TRUSTED_PROXIES, it is the peer.
    Otherwise it is the right-most X-Forwarded-For entry that is not itself a trusted proxy: entries
    to its left were written by the client and prove nothing. X-Real-Ip, X-Scheme and Forwarded are
    never read (a proxy that does not set them passes a client's copy through: security review H2).
    """
    peer = request.remote_ip or ""
    if not _from_trusted_proxy(request, config):
        if config.trust_proxy and "X-Forwarded-For" in request.headers:
            _warn_untrusted_peer(peer)
        return peer
    client = peer
    for hop in reversed(request.headers.get("X-Forwarded-For", "").split(",")):
        address = _address(hop)
        if address is None:
            break  # garbage where our proxy writes: keep the nearest address we can vouch for
        client = str(address)
        if not _is_trusted_proxy(address, config):
            break
    return client


def _is_loopback(ip):
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def over_https(request, config):
    """True when the request arrived over TLS (per X-Forwarded-Proto only from a trusted proxy)."""
    if _from_trusted_proxy(request, config):
        proto = _last(request.headers.get("X-Forwarded-Proto") or "").lower()
        if proto in ("http", "https"):
            return proto == "https"
    return request.protocol == "https"


def is_secure(request, config):
    """True when the request arrived over HTTPS or counts as such (a loopback client, no proxy)."""
    if over_https(request, config):
        return True
    has_forwarding = any(name in request.headers for name in FORWARDING_HEADERS)
    return not has_forwarding and _is_loopback(request.remote_ip or "")


def redirect_target(request, config):
    """The https:// URL to send a plain-HTTP request to, or None when it may proceed."""
    if not config.force_https or is_secure(request, config):
        return None
    return "https://" + request.host + request.uri


class HttpsRedirectHandler(tornado.web.RequestHandler):
    """Answers every method with a redirect to the https URL: 301 for GET/HEAD, 308 otherwise."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def initialize(self, url):
        self.url = url

    def check_xsrf_cookie(self):
        """Nothing is done with the request: no XSRF check needed before redirecting it."""

    def prepare(self):
        self.set_header("Location", self.url)
        self.set_header("Cache-Control", "no-store")
        self.set_status(301 if self.request.method in ("GET", "HEAD") else 308)
        self.finish()


class HstsTransform(tornado.web.OutputTransform):
    """Adds Strict-Transport-Security to every response sent over HTTPS (API, console, static)."""

    config = None

    def __init__(self, request):
        super().__init__(request)
        self.secure = self.config is not None and over_https(request, self.config)

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        if self.secure:
            headers["Strict-Transport-Security"] = HSTS
        return status_code, headers, chunk


def hsts_transform(config):
    """An HstsTransform class bound to `config`, for Application(transforms=[...])."""
    return type("BoundHstsTransform", (HstsTransform,), {"config": config})


# ---------------------------------------------------------------- export streaming

# The most the serving loop takes from the export child's pipe at once (its buffer is 64 KiB).
PIPE_READ = 65536


async def stream(handler, project, fmt, bom=False):
    """Send `project`'s export in `fmt` through `handler` as a forked child writes it (the API's and the
    console's download); with `bom`, a CSV starts with the UTF-8 byte order mark (for spreadsheets)."""
    handler.set_header("Content-Type", export.FORMATS[fmt])
    handler.set_header("Content-Disposition", f'attachment; filename="{export.filename(project, fmt)}"')
    pid, fd = exportproc.start(project, fmt, bom)
    pipe = PipeIOStream(fd)
    sent, code = False, None
    try:
        while True:
            try:
                data = await pipe.read_bytes(PIPE_READ, partial=True)
            except StreamClosedError:
                break  # the child closed its end: it is exiting
            handler.write(data)
            await handler.flush()  # the child waits on the full pipe meanwhile: one read in memory here
            sent = True
        code = await _exit_status(pid)
    except StreamClosedError:
        return  # the client went away: the child is stopped below
    finally:
        pipe.close()
        if code is None:
            _stop(pid)
    if code == exportproc.DONE:
        handler.finish()
        return
    if not sent:
        if code == exportproc.UNAVAILABLE:
            raise DatabaseUnavailable()
        raise RuntimeError(f"export child ended with status {code}")
    # Headers and part of the body are out: cut the connection so the client sees a truncated
    # transfer instead of a well-formed but incomplete file.
    log.warning("export interrupted (status %s)", code, extra={"request_id": getattr(handler, "request_id", None)})
    handler.request.connection.stream.close()


async def _exit_status(pid):
    """The exit status of the export child, which has closed its pipe and is exiting."""
    delay = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _stop(pid):
    """Kill and reap the export child (the client went away, or the request was cancelled)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # SIGKILL cannot be caught: this returns at once


# ---------------------------------------------------------------- health


def database_ok():
    """True when a trivial query succeeds."""
    try:
        with block() as db:
            db.execute_sql("SELECT 1").fetchone()
        return True
    except DatabaseUnavailable:
        return False
