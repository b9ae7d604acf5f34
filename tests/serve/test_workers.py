"""`visiondeck serve --workers 2` spreads connections over its workers: a real server.

The mechanism is one SO_REUSEPORT listening socket per worker (gunicorn's `reuse_port`), so
the kernel hands each new connection to one of them by a hash of its addresses, instead of
one shared socket whose first waking worker takes every pending connection. The test reads
the sockets from `ss` (iproute2): two listeners owned by two worker processes, then 32
connections opened at once, each answered, held by both workers (all 32 on one worker
would happen once in 2^31 runs).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.serve.conftest import learnable_png
from tests.servers import free_port, stop_process, wait_server_ready

CONNECTIONS = 32


def _socket_owners(port: int, state: str) -> list[set[int]]:
    """For each TCP socket on local port `port` in `state`, the pids that hold it."""
    assert shutil.which("ss"), "the test reads sockets with `ss` (iproute2)"
    out = subprocess.run(["ss", "-tnpH", "state", state, f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return [{int(pid) for pid in re.findall(r"pid=(\d+)", line)}
            for line in out.splitlines() if line.strip()]


def _read_status(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        assert chunk, "the server closed the connection without answering"
        head += chunk
    return head.split(b"\r\n", 1)[0]


def test_two_workers_each_listen_and_share_connections(serve_bundle: Path,
                                                       tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONDECK_")}
    env |= {"VISIONDECK_WATCH_INTERVAL_S": "0", "VISIONDECK_PREPROCESS_THREADS": "1",
            "VISIONDECK_INTRA_OP_THREADS": "1", "OMP_NUM_THREADS": "1",
            "VISIONDECK_MONITOR": "false", "VISIONDECK_EXPLAIN": "false"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "visiondeck", "serve", str(serve_bundle), "--port",
             str(port), "--workers", "2", "--data-dir", str(tmp_path / "data"),
             "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            start_new_session=True)
    conns: list[socket.socket] = []
    try:
        wait_server_ready(process, base, log)
        listeners = _socket_owners(port, "listening")
        # one socket per worker, each held by one process (a shared socket is one line
        # held by every worker)
        assert len(listeners) == 2 and all(len(owners) == 1 for owners in listeners), listeners
        workers = set.union(*listeners)
        assert len(workers) == 2 and process.pid not in workers

        conns = [socket.create_connection(("127.0.0.1", port), timeout=60)
                 for _ in range(CONNECTIONS)]
        for conn in conns:
            conn.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert [_read_status(conn) for conn in conns] == [b"HTTP/1.1 200 OK"] * CONNECTIONS
        held = _socket_owners(port, "established")
        assert len(held) == CONNECTIONS
        assert set.union(*held) == workers, held  # both workers answered some

        # and the app each worker built is the whole service
        answer = httpx.post(f"{base}/predict", timeout=60,
                            files={"image": ("x.png", learnable_png("left"), "image/png")})
        assert answer.status_code == 200, answer.text
    finally:
        for conn in conns:
            conn.close()
        stop_process(process, grace=40)
    assert process.returncode == 0, log.read_text()[-3000:]  # a graceful stop on SIGTERM
