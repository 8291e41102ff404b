"""Serving: one process or N forked workers on shared sockets, with a graceful SIGTERM drain."""

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import time

import tornado.httpserver
import tornado.netutil

from pulse import db, hotpath
from pulse.delivery import Deliverer
from pulse.migrations import migrate_database

log = logging.getLogger("pulse.server")

DRAIN_SECONDS = 10.0
# Tornado's HTTPServer limits against slow and hostile clients. API handlers stream their bodies and
# cut them at 1 MiB themselves; every other handler's body is buffered in RAM, so the server-wide cap
# stays small (a console form is a few hundred bytes). Tests shorten the timeouts. A header block over
# max_header_size gets no answer at all: Tornado's IOStream closes the connection itself (QA #12).
HTTP_SERVER_LIMITS = dict(
    max_body_size=2 * 1024 * 1024, idle_connection_timeout=60, body_timeout=30, max_header_size=64 * 1024
)


def _worker(make_app, config, sockets):
    """Serve on `sockets` until SIGTERM/SIGINT, then drain in-flight requests and return."""

    async def main():
        app = make_app(config)
        # The outbox delivery loop (pulse.delivery): every serving process takes part.
        deliverer = Deliverer(config, app.settings["secret_box"]).start()
        # No xheaders: Tornado would believe X-Real-Ip from anyone. web.client_ip
        # reads the forwarding headers, and only from PULSE_TRUSTED_PROXIES.
        server = tornado.httpserver.HTTPServer(app, xheaders=False, **HTTP_SERVER_LIMITS)
        server.add_sockets(sockets)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        loop.add_signal_handler(signal.SIGUSR1, hotpath.log_stats)
        log.info("serving on http://%s:%s (pid %s)", config.host, sockets[0].getsockname()[1], os.getpid())
        warming = asyncio.ensure_future(hotpath.warm_up())
        await stopping.wait()
        warming.cancel()
        server.stop()
        deadline = time.monotonic() + DRAIN_SECONDS
        while app.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if app.inflight:
            log.warning("drain timed out after %.0f s: closing %d unfinished requests", DRAIN_SECONDS, app.inflight)
        await server.close_all_connections()
        await deliverer.stop()
        log.info("stopped (pid %s)", os.getpid())

    asyncio.run(main())


def _prefork(make_app, count, config, sockets):
    """Fork `count` workers sharing the sockets; forward SIGTERM/SIGINT; restart crashed ones."""
    children = {}

    def spawn():
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the loop installs log_stats
            code = 1
            try:
                _worker(make_app, config, sockets)
                code = 0
            except BaseException:
                log.exception("worker %s crashed", os.getpid())
            finally:
                # A crash must exit non-zero, or the parent would not start a replacement.
                os._exit(code)
        children[pid] = time.monotonic()

    stopping = []

    def forward(signum, _frame):
        stopping.append(signum)
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def forward_stats(_signum, _frame):
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGUSR1, forward_stats)
    for _ in range(count):
        spawn()
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.pop(pid, None)
        if not stopping and (os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0):
            log.error("worker %s died (status %s); starting another", pid, status)
            spawn()
    return 0


def serve(make_app, config, processes=1):
    """Migrate, bind, and serve `make_app(config)` with one or more processes."""
    db.bind(config.database_url)
    migrate_database()
    db.database.close()  # children must not share the parent's connection
    try:
        sockets = tornado.netutil.bind_sockets(config.port, config.host)
    except OSError as exc:
        hint = "; choose another port with --port N or PULSE_PORT=N"
        if exc.errno == errno.EADDRINUSE:
            hint = " (another server is listening there)" + hint
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = "; set --host or PULSE_HOST to an address of this machine"
        raise OSError(exc.errno, f"cannot listen on {config.host}:{config.port}: {exc.strerror}{hint}") from None
    # The port actually bound (--port 0 picks one): sandbox projects reach their simulator through it.
    config = dataclasses.replace(config, port=sockets[0].getsockname()[1])
    if processes > 1:
        return _prefork(make_app, processes, config, sockets)
    _worker(make_app, config, sockets)
    return 0
