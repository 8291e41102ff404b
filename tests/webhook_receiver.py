"""A real HTTP server standing in for the tenant's app: verifies every delivery with `standardwebhooks`.

Also a pytest plugin (tests/conftest.py lists it): fixtures `receiver` and `deliverer` (this
process's outbox delivery loop on the test's IOLoop, as `run.py serve` starts it).

    receiver = Receiver().start()           # 127.0.0.1:<free port>, in a thread
    receiver.secret = "whsec_..."           # the endpoint's secret, once created
    receiver.mode = "ok" | "fail" | "hang"  # 200, 503, or never answer (until released)
    receiver.down() / receiver.up()         # stop listening (connection refused) / listen again, same port
    receiver.received                       # [(webhook-id, parsed body)] of verified deliveries, in order
    receiver.rejected                       # bodies whose signature did not verify
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name: value for name, value in self.headers.items()}
        receiver.attempts.append((headers.get("webhook-id"), time.monotonic()))
        mode = receiver.mode
        if mode == "hang":
            receiver.hanging.set()
            receiver.release.wait(60)
            return  # close without an answer
        if mode == "fail":
            self.send_response(503)
            self.end_headers()
            return
        try:
            data = Webhook(receiver.secret).verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:
            receiver.rejected.append((str(exc), body))
            self.send_response(400)
            self.end_headers()
            return
        with receiver.lock:
            receiver.received.append((headers["webhook-id"], data))
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/")
            self.end_headers()
            return
        self.send_response(204)
        self.end_headers()


class Receiver:
    def __init__(self):
        self.secret = None
        self.mode = "ok"
        self.received, self.rejected, self.attempts = [], [], []
        self.lock = threading.Lock()
        self.hanging, self.release = threading.Event(), threading.Event()
        self.server = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/hooks/pulse"

    def start(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self.server.daemon_threads = True
        self.server.receiver = self
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    up = start

    def down(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def stop(self):
        self.release.set()
        self.down()

    def events(self, event_type=None):
        """Parsed bodies received, optionally of one type."""
        return [body for _, body in self.received if event_type is None or body["type"] == event_type]

    def wait_for(self, count, timeout=15, event_type=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.events(event_type)) >= count:
                return self.events(event_type)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} deliveries, got {json.dumps(self.events(event_type))[:2000]}")

    async def until(self, count, timeout=15, event_type=None):
        """wait_for without blocking the test's event loop (where the delivery loop runs)."""
        import asyncio

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.events(event_type)) >= count:
                return self.events(event_type)
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} deliveries, got {json.dumps(self.events(event_type))[:2000]}")


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def deliverer(io_loop, app, http_server):
    """This process's delivery loop, as `run.py serve` starts it."""
    from pulse.delivery import Deliverer

    loop = Deliverer(app.settings["config"], app.settings["secret_box"])

    async def start():
        loop.start()

    io_loop.run_sync(start)
    yield loop
    io_loop.run_sync(loop.stop)


async def settled(timeout=15):
    """Wait until no delivery is in flight (each attempt recorded), without blocking the test's loop."""
    import asyncio

    from pulse import db
    from pulse.models import WebhookDelivery

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.block():
            busy = (
                WebhookDelivery.select()
                .where(WebhookDelivery.status == "pending", WebhookDelivery.lease_until_ms > 0)
                .exists()
            )
        if not busy:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("deliveries still in flight")


def all_delivered(db_url, count, timeout=20):
    """Wait (blocking) until `count` deliveries in the database at `db_url` have succeeded."""
    from pulse import db
    from pulse.models import WebhookDelivery

    db.bind(db_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with db.block():
                if WebhookDelivery.select().where(WebhookDelivery.status == "succeeded").count() >= count:
                    return
            time.sleep(0.05)
        raise AssertionError("deliveries not recorded as succeeded")
    finally:
        db.database.close()
