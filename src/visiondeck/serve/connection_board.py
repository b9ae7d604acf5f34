"""Even connection counts across the workers of `visiondeck serve --workers N`.

uvicorn's workers share one listening socket, and a worker takes every pending connection
when it wakes (uvloop accepts in a loop). A client that opens its keep-alive connections at
once - a load balancer, a browser, wrk - therefore often lands all of them on one worker
while the other idles: 8/0 was measured with `wrk -c 8`, which halves the throughput of the
second worker for the whole run. Nginx meets the same problem by having a busy worker hold
back from accepting; here each worker publishes its open-connection count on a small
shared board (a memory-mapped file the supervisor creates), and a worker that holds more
connections than the least busy live worker lets a pending connection wait a moment for
that one. The wait is bounded (`MAX_DEFER_S`), so a stuck or dying worker costs a new
connection a few milliseconds at most and never refuses it.

It hooks in through uvicorn's public `loop` option: `new_balanced_loop` builds the usual
event loop (uvloop when installed) whose `create_server(sock=...)` - what uvicorn's workers
call with the shared socket - serves this accept loop. The HTTP protocol, the app and the
shutdown sequence are uvicorn's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["BOARD_VARIABLE", "BalancedServer", "ConnectionBoard", "new_balanced_loop"]

logger = logging.getLogger("uvicorn.error")

#: the environment variable naming the board file; workers inherit it from `serve`
BOARD_VARIABLE = "VISIONDECK_ACCEPT_BOARD"
#: board files are named PREFIX + the supervisor's pid, so one can be found from outside
BOARD_PREFIX = "visiondeck-accept-"
#: worker slots on a board: uvicorn starts a replacement before retiring the old worker
#: (SIGHUP), and a killed worker's slot is reused once its process is gone
SLOTS = 64
_WORDS_PER_SLOT = 2  # pid, open connections
_BOARD_BYTES = SLOTS * _WORDS_PER_SLOT * 8
#: how long a busier worker lets a pending connection wait for a less busy one, in steps
DEFER_STEP_S = 0.001
MAX_DEFER_S = 0.02
#: accept() errors that mean "no descriptors left": pause as asyncio's own server does
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class ConnectionBoard:
    """Per-worker open-connection counts in shared memory.

    Each worker writes only its own slot (a pid and a count, 8-byte aligned words), so
    nothing needs a lock but claiming a slot. Others' counts are read without one: a stale
    read only makes one accept decision slightly off, and the next one corrects it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < _BOARD_BYTES:
                raise ValueError(f"{self.path} is not a connection board (too short)")
            self._map = mmap.mmap(fd, _BOARD_BYTES)
        finally:
            os.close(fd)
        self._words = memoryview(self._map).cast("q")
        self.slot: int | None = None

    @staticmethod
    def create(directory: str | os.PathLike[str] | None = None) -> Path:
        """A fresh, empty board file (in /dev/shm when there is one: it is memory anyway)."""
        if directory is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            directory = "/dev/shm"
        fd, name = tempfile.mkstemp(prefix=f"{BOARD_PREFIX}{os.getpid()}-", suffix=".board",
                                    dir=directory)
        try:
            os.write(fd, bytes(_BOARD_BYTES))
        finally:
            os.close(fd)
        return Path(name)

    def claim(self) -> int:
        """Take a free slot (never used, released, or left by a process that is gone)."""
        pid = os.getpid()
        with open(self.path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                for slot in range(SLOTS):
                    owner = self._words[slot * _WORDS_PER_SLOT]
                    if owner in (0, pid) or not _alive(owner):
                        self._words[slot * _WORDS_PER_SLOT + 1] = 0
                        self._words[slot * _WORDS_PER_SLOT] = pid
                        self.slot = slot
                        return slot
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        raise RuntimeError(f"all {SLOTS} worker slots on {self.path} are taken")

    def release(self) -> None:
        if self.slot is not None:
            self._words[self.slot * _WORDS_PER_SLOT + 1] = 0
            self._words[self.slot * _WORDS_PER_SLOT] = 0
            self.slot = None

    def add(self, delta: int) -> None:
        if self.slot is not None:
            self._words[self.slot * _WORDS_PER_SLOT + 1] += delta

    def _occupied(self) -> Iterator[tuple[int, int, int]]:
        """(slot, pid, open connections) of every slot with an owner, alive or not."""
        words = self._words
        for slot in range(SLOTS):
            pid = words[slot * _WORDS_PER_SLOT]
            if pid:
                yield slot, pid, words[slot * _WORDS_PER_SLOT + 1]

    def counts(self) -> dict[int, int]:
        """Open connections by pid, for every live worker on the board."""
        return {pid: count for _, pid, count in self._occupied() if _alive(pid)}

    def busier_than_peers(self) -> bool:
        """True when some other live worker holds fewer connections than this one (the
        liveness check, a system call, only for those that would count)."""
        if self.slot is None:
            return False
        mine = self._words[self.slot * _WORDS_PER_SLOT + 1]
        return any(count < mine and _alive(pid)
                   for slot, pid, count in self._occupied() if slot != self.slot)

    def close(self) -> None:
        self.release()
        self._words.release()
        self._map.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or the pid reused by someone else
        return False
    return True


class BalancedServer:
    """What `loop.create_server(sock=...)` returns to uvicorn: accepts from the shared
    socket, deferring to less busy workers, and hands each connection to uvicorn's protocol.

    Implements the part of `asyncio.Server` uvicorn uses (`close`, `wait_closed`,
    `sockets`, `is_serving`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], Any],
                 sock: socket.socket, board: ConnectionBoard, backlog: int = 100) -> None:
        self._loop, self._factory, self._sock, self._board = loop, protocol_factory, sock, board
        sock.setblocking(False)
        sock.listen(backlog)
        board.claim()
        self._task: asyncio.Task[None] | None = loop.create_task(self._accept_forever())

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._task is not None and not self._task.done()

    def close(self) -> None:
        """Stop accepting; open connections stay with uvicorn, which drains them.

        The reader goes now, not when the cancelled task next runs: uvicorn closes the
        listening socket right after this call returns."""
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        self._board.release()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _accept_forever(self) -> None:
        while True:
            await self._readable()
            waited = 0.0
            while self._board.busier_than_peers() and waited < MAX_DEFER_S:
                await asyncio.sleep(DEFER_STEP_S)
                waited += DEFER_STEP_S
            await self._accept_pending(force=waited >= MAX_DEFER_S)

    def _readable(self) -> asyncio.Future[None]:
        ready: asyncio.Future[None] = self._loop.create_future()
        fd = self._sock.fileno()

        def wake() -> None:
            self._loop.remove_reader(fd)
            if not ready.done():
                ready.set_result(None)

        self._loop.add_reader(fd, wake)
        ready.add_done_callback(lambda _: self._loop.remove_reader(fd)
                                if ready.cancelled() else None)
        return ready

    async def _accept_pending(self, *, force: bool) -> None:
        """Accept while this worker is not busier than a peer (one anyway when `force`)."""
        while force or not self._board.busier_than_peers():
            force = False
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:
                    logger.error("cannot accept a connection (%s); pausing 1 s", exc)
                    await asyncio.sleep(1.0)
                return  # ECONNABORTED and the like: the client gave up, carry on
            await self._serve(conn)

    async def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        board, counted = self._board, True
        board.add(1)

        def forget() -> None:
            nonlocal counted
            if counted:
                counted = False
                board.add(-1)

        def protocol_factory() -> Any:
            protocol = self._factory()
            lost = protocol.connection_lost

            def connection_lost(exc: Exception | None) -> None:
                forget()
                lost(exc)

            protocol.connection_lost = connection_lost
            return protocol

        try:
            await self._loop.connect_accepted_socket(protocol_factory, conn)
        except Exception as exc:  # the connection is lost, the server is not
            forget()
            conn.close()
            logger.warning("dropped a new connection: %s", exc)


class _BalancedAccept:
    """Event-loop mixin: `create_server` on an already bound socket (uvicorn's workers)
    serves a `BalancedServer` when a board is configured; anything else is the base loop's."""

    _board: ConnectionBoard | None = None

    async def create_server(self, protocol_factory: Callable[[], Any], host: Any = None,
                            port: Any = None, *, sock: socket.socket | None = None,
                            ssl: Any = None, backlog: int = 100, **kwargs: Any) -> Any:
        path = os.environ.get(BOARD_VARIABLE)
        if sock is None or ssl is not None or not path or host is not None:
            return await super().create_server(  # type: ignore[misc]
                protocol_factory, host, port, sock=sock, ssl=ssl, backlog=backlog, **kwargs)
        if self._board is None:
            self._board = ConnectionBoard(path)
        return BalancedServer(self, protocol_factory, sock, self._board,  # type: ignore[arg-type]
                              backlog)


def _loop_class() -> type[asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # uvicorn without [standard]
        base: type[asyncio.AbstractEventLoop] = asyncio.SelectorEventLoop
    else:
        base = uvloop.Loop
    return type("BalancedLoop", (_BalancedAccept, base), {})


_LOOP_CLASS: type[asyncio.AbstractEventLoop] | None = None


def new_balanced_loop() -> asyncio.AbstractEventLoop:
    """uvicorn's `loop=` factory for `serve --workers N` (see the module's docstring)."""
    global _LOOP_CLASS
    if _LOOP_CLASS is None:
        _LOOP_CLASS = _loop_class()
    return _LOOP_CLASS()
