"""Answered predictions survive SIGKILL: real `visiondeck serve` processes on PostgreSQL.

A server answers 20 predictions while its database is unreachable (a closed port), the
rows reach its journal (`visiondeck_history_journal_rows` on /metrics says so), and the
process is killed with SIGKILL: no shutdown hook runs. A restart on the same data dir with
the database reachable writes every one of them; so does a restart while the database is
still away that is itself killed after taking the journal over, then a third start.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import learnable_png
from tests.serve.test_store import PG_URL, require_postgres, unique_prefix
from tests.servers import free_port, wait_server_ready
from visiondeck.serve.history.store import PredictionQuery, PredictionStore


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture
def history(tmp_path) -> Iterator[PredictionStore]:
    """The PostgreSQL table the servers write to (a prefix of its own), read directly."""
    require_postgres()
    store = PredictionStore(PG_URL, prefix=unique_prefix())
    yield store
    store.drop()
    store.dispose()


@pytest.fixture
def start(serve_bundle: Path, tmp_path: Path, history: PredictionStore) -> Iterator:
    started: list[Server] = []
    prefix = history.table.name.removesuffix("predictions")

    def start_server(database_url: str) -> Server:
        port = free_port()
        log = tmp_path / f"server-{len(started)}.log"
        env = {**os.environ, "VISIONDECK_TABLE_PREFIX": prefix,
               "VISIONDECK_WATCH_INTERVAL_S": "0", "VISIONDECK_PREPROCESS_THREADS": "1",
               "VISIONDECK_INTRA_OP_THREADS": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "visiondeck", "serve", str(serve_bundle), "--port",
                   str(port), "--database-url", database_url, "--data-dir",
                   str(tmp_path / "data"), "--log-level", "warning"]
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        server = Server(f"http://127.0.0.1:{port}", process, log)
        started.append(server)
        wait_server_ready(server.process, server.url, server.log, timeout=120.0)
        return server

    yield start_server
    for server in started:
        if server.process.poll() is None:
            server.kill()


def _until(condition, what: str, server: Server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}: {server.log.read_text()[-3000:]}")
        time.sleep(0.05)


def _predict(server: Server, n: int = 20) -> dict[str, str]:
    """n answered predictions: id → label token."""
    answers = {}
    for i in range(n):
        response = httpx.post(f"{server.url}/predict", timeout=30,
                              content=learnable_png(("left", "right")[i % 2], seed=i),
                              headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        answers[response.json()["id"]] = response.json()["label_token"]
    return answers


def _unreachable() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"  # nothing listens


def _stored(history: PredictionStore) -> set[str]:
    return {r.id for r in history.iter_records(PredictionQuery())}


def test_answered_predictions_survive_sigkill_while_the_database_is_away(start, history
                                                                         ) -> None:
    server = start(_unreachable())
    answered = _predict(server)
    _until(lambda: server.metric("visiondeck_history_journal_rows") == 20,
           "20 journaled rows", server)
    server.kill()

    back = start(PG_URL)
    _until(lambda: _stored(history) == set(answered), "every answered row stored", back)
    _until(lambda: back.metric("visiondeck_history_journal_rows") == 0, "an empty journal",
           back)


def test_a_restart_while_the_database_is_still_away_loses_nothing(start, history) -> None:
    """The second start takes the killed server's journal over, cannot write it either, and
    is killed too (the old writer deleted its spool as it loaded it: those rows were gone).
    A label sent while the database was away arrives with its row."""
    server = start(_unreachable())
    answered = _predict(server)
    first = next(iter(answered))
    labelled = httpx.put(f"{server.url}/predictions/{first}/label", timeout=10,
                         json={"label": "middle", "token": answered[first]})
    assert labelled.status_code == 200, labelled.text
    _until(lambda: server.metric("visiondeck_history_journal_rows") == 20
           and server.metric("visiondeck_history_journal_labels") == 1,
           "20 journaled rows and a label", server)
    server.kill()

    again = start(_unreachable())
    _until(lambda: again.metric("visiondeck_history_rows_replayed_total") == 20,
           "the killed server's journal taken over", again)
    assert again.metric("visiondeck_history_journal_rows") == 20
    again.kill()

    back = start(PG_URL)
    _until(lambda: _stored(history) == set(answered), "every answered row stored", back)
    _until(lambda: history.get(first).label == "middle", "the label", back)
