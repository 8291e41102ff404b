"""Exports generated in a forked child: it reads and encodes the pages, the serving loop only forwards bytes.

A page of the export (two queries, row building, CSV or JSON encoding) is 20-50 ms of CPU; done on
the serving loop it stalls every other request for that long, page after page (docs/performance.md).
The child reads with its own database connection and writes the encoded chunks to a pipe; the
pipe's buffer is the flow control (the child blocks while the client is slow), so memory stays at
one page in the child and one pipe read in the parent. The child exits with a status that tells
the parent how it ended; the parent kills it when the client goes away.
"""

import contextlib
import gc
import logging
import os
import signal
import stat

import peewee

from pulse import db, export
from pulse.models import Project

log = logging.getLogger("pulse.exportproc")

DONE, UNAVAILABLE, FAILED = 0, 3, 1
NICE = 10  # an export is batch work: it takes the CPU the request handlers leave
# Excel reads a CSV without a byte order mark in the local code page: "Zoë" would show as "ZoÃ«".
BOM = "\ufeff"
# The parent's connections, kept referenced in the child so they are never closed (or reused) there.
_inherited: list = []


def start(project: Project, fmt: str, bom: bool = False) -> tuple[int, int]:
    """Fork a child writing the export of `project` in `fmt`; returns (pid, fd of the pipe's read end)."""
    read_fd, write_fd = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # pragma: no cover - the child; coverage is not collected there
        code = FAILED
        try:
            os.close(read_fd)
            _detach(write_fd)
            code = _write(write_fd, project, fmt, bom)
        finally:
            os._exit(code)
    os.close(write_fd)
    return pid, read_fd


def _detach(keep_fd: int) -> None:
    """In the child: drop the parent's signal handling, sockets and database connection."""
    gc.disable()  # a collection would touch (and so copy) every page of the parent's heap
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # a signal here must not wake the parent's loop
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_DFL)
    # The parent's client and listening sockets: a copy held open here would keep a connection the
    # parent closes (or its port) alive until the export ends. Closing a copy sends nothing.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep_fd:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.close(fd)
    _pin()
    handle = db.database.obj
    _inherited.append(handle._state)  # never used or closed here: it is the parent's
    handle._state = peewee._ConnectionLocal()
    handle._pulse_connect_failed_at = None


def _pin() -> None:
    """Lower the child's priority (serving requests comes first), and move it to PULSE_EXPORT_CPUS when set."""
    with contextlib.suppress(OSError):
        os.nice(int(os.environ.get("PULSE_EXPORT_NICE", NICE)))
    cpus = os.environ.get("PULSE_EXPORT_CPUS", "").strip()
    if cpus:
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})


def _write(fd: int, project: Project, fmt: str, bom: bool) -> int:
    """Write every chunk of the export to `fd`; the exit status for the parent."""
    try:
        with os.fdopen(fd, "wb") as out:
            for index, chunk in enumerate(export.chunks(project, fmt)):
                if index == 0 and bom and fmt == "csv":
                    chunk = BOM + chunk
                out.write(chunk.encode("utf-8"))
                out.flush()
    except db.DatabaseUnavailable:
        return UNAVAILABLE
    except BrokenPipeError:
        return FAILED  # the parent stopped reading: the client went away
    except Exception:
        log.exception("export failed in its child process")
        return FAILED
    return DONE
