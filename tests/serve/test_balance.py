"""Connections spread evenly over `serve --workers N` (`visiondeck.serve.connection_board`).

Real processes throughout: the board is shared memory between processes, and what it
fixes - one worker taking every connection a client opens at once - only happens with
several processes accepting from one socket.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port
from visiondeck.serve import connection_board as balance
from visiondeck.serve.connection_board import BOARD_PREFIX, BOARD_VARIABLE, ConnectionBoard

_HOLDER = """
import sys
from visiondeck.serve.connection_board import ConnectionBoard
board = ConnectionBoard(sys.argv[1])
board.claim()
board.add(int(sys.argv[2]))
print("ready", flush=True)
sys.stdin.read()  # hold the slot until the test closes our stdin
"""


def _holder(path: Path, connections: int) -> subprocess.Popen:
    """Another live process on the board, holding `connections` and never accepting."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(connections)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=10)


@pytest.fixture
def board_path(tmp_path: Path) -> Iterator[Path]:
    path = ConnectionBoard.create(tmp_path)
    yield path
    path.unlink(missing_ok=True)


def test_board_counts_peers_and_forgets_the_dead(board_path: Path) -> None:
    board = ConnectionBoard(board_path)
    board.claim()
    board.add(2)
    assert board.counts() == {os.getpid(): 2}
    peer = _holder(board_path, 1)
    try:
        assert board.counts() == {os.getpid(): 2, peer.pid: 1}
        assert board.busier_than_peers()  # 2 against 1
        board.add(-1)
        assert not board.busier_than_peers()  # level: accept
    finally:
        _release(peer)
    board.add(5)
    assert board.counts() == {os.getpid(): 6}  # a finished process no longer counts
    assert not board.busier_than_peers()
    board.close()


def test_slots_of_gone_processes_are_reused(board_path: Path) -> None:
    for _ in range(balance.SLOTS + 5):  # more processes than slots, one after another
        _release(_holder(board_path, 0))
    board = ConnectionBoard(board_path)
    assert board.claim() == 0
    board.close()


def test_a_file_that_is_not_a_board_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.board"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not a connection board"):
        ConnectionBoard(path)


# -------------------------------------------------------------- the accept loop itself


def _worker(sock: socket.socket, board: str, max_defer: float) -> None:
    """A worker as uvicorn runs it: the balanced loop, `create_server(sock=...)` on the
    shared socket. Its protocol answers each line with the worker's pid."""
    import asyncio

    os.environ[BOARD_VARIABLE] = board
    balance.MAX_DEFER_S = max_defer

    class Who(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(f"{os.getpid()}\n".encode())

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Who, sock=sock)
        assert isinstance(server, balance.BalancedServer)
        await asyncio.sleep(3600)

    loop = balance.new_balanced_loop()
    loop.run_until_complete(main())


def _start_workers(sock: socket.socket, board: Path, n: int, max_defer: float
                   ) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("spawn")  # as uvicorn starts its workers
    workers = [context.Process(target=_worker, args=(sock, str(board), max_defer), daemon=True)
               for _ in range(n)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    reader = ConnectionBoard(board)
    while not {w.pid for w in workers} <= reader.counts().keys():
        assert time.monotonic() < deadline, "workers did not come up"
        assert all(w.is_alive() for w in workers), "a worker died"
        time.sleep(0.02)
    reader.close()
    return workers


def _ask(clients: list[socket.socket]) -> list[int]:
    for client in clients:
        client.sendall(b"who\n")
    return [int(client.makefile().readline()) for client in clients]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


def test_a_burst_of_connections_splits_evenly(listener: socket.socket, board_path: Path
                                              ) -> None:
    """Eight connections opened at once - what wrk -c8, a browser or a proxy does. Without
    the board, the worker that wakes first accepts every pending one (8/0 was measured)."""
    workers = _start_workers(listener, board_path, 2, max_defer=2.0)
    port = listener.getsockname()[1]
    try:
        for _ in range(3):  # and again once the previous connections are gone
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
            owners = _ask(clients)
            counts = sorted(owners.count(pid) for pid in {w.pid for w in workers})
            assert counts == [4, 4], counts
            for client in clients:
                client.close()
            reader = ConnectionBoard(board_path)
            deadline = time.monotonic() + 10
            while any(reader.counts().values()):  # closed connections leave the board
                assert time.monotonic() < deadline, reader.counts()
                time.sleep(0.02)
            reader.close()
    finally:
        for worker in workers:
            worker.kill()


def test_a_worker_that_never_accepts_delays_a_connection_briefly_not_forever(
        listener: socket.socket, board_path: Path) -> None:
    """The other live worker on the board holds no connections but never accepts (stuck,
    or busy for seconds): each connection past the first waits out the bounded deferral,
    then this worker takes it."""
    stuck = _holder(board_path, 0)
    workers = _start_workers(listener, board_path, 1, max_defer=0.1)
    port = listener.getsockname()[1]
    try:
        waits, clients = [], []
        for _ in range(3):  # each stays open: this worker's count grows past the stuck one
            started = time.perf_counter()
            clients.append(socket.create_connection(("127.0.0.1", port)))
            assert _ask(clients[-1:]) == [workers[0].pid]
            waits.append(time.perf_counter() - started)
        assert waits[0] < 0.09  # level with the stuck one: accepted at once
        assert all(0.09 <= wait < 2.0 for wait in waits[1:]), waits
    finally:
        for worker in workers:
            worker.kill()
        _release(stuck)


# --------------------------------------------------- through `visiondeck serve --workers 2`


def test_serve_with_two_workers_balances_and_removes_its_board(serve_bundle: Path,
                                                               tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONDECK_")}
    env["VISIONDECK_WATCH_INTERVAL_S"] = "0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "visiondeck", "serve", str(serve_bundle), "--port", str(port),
         "--workers", "2", "--data-dir", str(tmp_path / "data"), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    pattern = f"{BOARD_PREFIX}{proc.pid}-*.board"
    try:
        deadline = time.monotonic() + 120
        boards: list[Path] = []
        while not boards:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "serve made no connection board"
            boards = [p for d in ("/dev/shm", os.environ.get("TMPDIR", "/tmp"))
                      if os.path.isdir(d) for p in Path(d).glob(pattern)]
            time.sleep(0.05)
        board = ConnectionBoard(boards[0])
        while len(board.counts()) < 2:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "two workers did not register"
            time.sleep(0.05)
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}") for _ in range(8)]
        for client in clients:
            client.__enter__()
        try:
            assert all(c.get("/health").status_code == 200 for c in clients)
            counts = sorted(board.counts().values())
            assert len(counts) == 2 and counts[1] - counts[0] <= 1 and sum(counts) == 8, counts
        finally:
            for client in clients:
                client.__exit__(None, None, None)
        board.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    assert not boards[0].exists()
