"""A loopback TCP proxy for fault tests: cut (drop every connection, refuse or blackhole new ones) and restore.

It runs on its own threads, so it keeps working while the app under test blocks its event loop on a
synchronous database call.
"""

import contextlib
import logging
import select
import socket
import threading

log = logging.getLogger("tests.tcp_proxy")


class TcpProxy:
    """Forward 127.0.0.1:<port> to (host, port). `cut()` simulates the upstream going away."""

    def __init__(self, target_host, target_port, mode="refuse"):
        self.target = (target_host, target_port)
        self.mode = mode  # "refuse": connects are refused; "blackhole": accepted and never answered
        self._lock = threading.Lock()
        self._pairs = []
        self._held = []
        self._down = False
        self._listener = None
        self._stop = False
        self.port = None
        self.accepted = 0
        self._open_listener(0)
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------- control

    @property
    def is_cut(self):
        return self._down

    def cut(self, mode=None):
        """Close every proxied connection; new ones are refused (or accepted and ignored)."""
        with self._lock:
            self._down = True
            if mode:
                self.mode = mode
            pairs, self._pairs = self._pairs, []
            if self.mode == "refuse":
                self._close_listener()
        for pair in pairs:
            for sock in pair:
                _kill(sock)

    def restore(self):
        """Accept and forward again, on the same port."""
        with self._lock:
            held, self._held = self._held, []
            self._down = False
            if self._listener is None:
                self._open_listener(self.port)
        for sock in held:
            _kill(sock)

    def close(self):
        self._stop = True
        self.cut("refuse")
        self._thread.join(timeout=5)

    # -------------------------------------------------------------- internals

    def _open_listener(self, port):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        self._listener = listener
        self.port = listener.getsockname()[1]

    def _close_listener(self):
        if self._listener is not None:
            _kill(self._listener)
            self._listener = None

    def _accept_loop(self):
        while not self._stop:
            listener = self._listener
            if listener is None:
                threading.Event().wait(0.02)
                continue
            try:
                ready, _, _ = select.select([listener], [], [], 0.05)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue  # the listener was closed under us by cut()
            self.accepted += 1
            with self._lock:
                if self._down:
                    self._held.append(client)  # blackhole: the handshake never comes
                    continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _kill(client)
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=pair, daemon=True).start()
            threading.Thread(target=self._pump, args=pair[::-1], daemon=True).start()

    def _pump(self, source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _kill(source)
            _kill(sink)


def _kill(sock):
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
