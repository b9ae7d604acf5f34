"""Two stateless API replicas sharing one PostgreSQL database and one Redis.

Two real `visiondeck serve` processes on two ports - what a load balancer would spread
traffic over - with the same database URL, the same Redis and the same label secret, and
nothing else in common (separate data folders, separate processes). Predictions made on
either land in the one history that both read; a label token issued by one is accepted by
the other; the rate limit is one budget for the client across both replicas, not one per
replica.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import colour_png
from tests.servers import (
    create_database,
    drop_database,
    free_port,
    stop_process,
    wait_server_ready,
)

REDIS_URL = os.environ.get("VISIONDECK_TEST_REDIS", "redis://127.0.0.1:6379/0")
BURST = 12  # "12/hour": a bucket of 12 that refills one token every 5 minutes


@dataclass
class Replica:
    url: str
    process: subprocess.Popen
    log: Path


@pytest.fixture
def replicas(colour_bundle: Path, tmp_path: Path) -> Iterator[tuple[Replica, Replica, object]]:
    if os.environ.get("VISIONDECK_SKIP_SERVER_TESTS") == "1":
        pytest.skip("VISIONDECK_SKIP_SERVER_TESTS=1")
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not usable ({exc}); start it with "
                    "scripts/start-services.sh", pytrace=False)
    db = create_database(prefix="vd_replicas")
    env = {**os.environ, "VISIONDECK_LABEL_SECRET": uuid.uuid4().hex,
           # a namespace of our own in the shared Redis: other tests' buckets stay apart
           "VISIONDECK_REDIS_PREFIX": f"vdtest:{uuid.uuid4().hex[:8]}:",
           "VISIONDECK_WATCH_INTERVAL_S": "0", "VISIONDECK_PREPROCESS_THREADS": "1",
           "VISIONDECK_INTRA_OP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            log = tmp_path / f"{name}.log"
            command = [sys.executable, "-m", "visiondeck", "serve", str(colour_bundle),
                       "--port", str(port), "--database-url", db.url, "--redis-url",
                       REDIS_URL, "--rate-limit", f"{BURST}/hour", "--data-dir",
                       str(tmp_path / name), "--log-level", "warning"]
            with log.open("wb") as out:
                process = subprocess.Popen(command, env=env, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            started.append(Replica(f"http://127.0.0.1:{port}", process, log))
        for replica in started:
            wait_server_ready(replica.process, replica.url, replica.log, timeout=90.0)
        yield started[0], started[1], db
    finally:
        for replica in started:
            stop_process(replica.process)
        drop_database(db)


def _predict(replica: Replica, colour: str, seed: int) -> httpx.Response:
    return httpx.post(f"{replica.url}/predict", content=colour_png(colour, seed=seed),
                      headers={"Content-Type": "image/png"}, timeout=10)


def _rows(db) -> int:
    """Rows written so far; 0 while no writer has created the table yet (each replica's
    writer creates it with its first batch, off the request path)."""
    import psycopg

    try:
        return db.query("SELECT count(*) FROM visiondeck_predictions")[0][0]
    except psycopg.errors.UndefinedTable:
        return 0


def test_two_replicas_share_history_labels_and_rate_limit(replicas) -> None:
    a, b, db = replicas
    spent = {a.url: 0, b.url: 0}  # requests that took a token of this client's bucket, per replica
    made: dict[str, str] = {}  # prediction id → the replica that answered
    tokens: dict[str, str] = {}
    for seed, (replica, colour) in enumerate([(a, "red"), (b, "green"), (a, "blue"),
                                              (b, "red"), (a, "green"), (b, "blue")]):
        response = _predict(replica, colour, seed)
        spent[replica.url] += 1
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["predicted"] == colour
        made[body["id"]] = replica.url
        tokens[body["id"]] = body["label_token"]
    deadline = time.monotonic() + 30  # each replica writes its rows from a queue
    while _rows(db) < len(made) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _rows(db) == len(made)

    # either replica reads the history both wrote
    for replica in (a, b):
        page = httpx.get(f"{replica.url}/predictions", params={"limit": 100}, timeout=10)
        spent[replica.url] += 1
        assert page.status_code == 200, page.text
        assert page.json()["total"] == len(made)
        assert {item["id"] for item in page.json()["items"]} == set(made)

    # a label token issued by replica A is honoured by replica B (PUT label is not limited)
    first = next(pid for pid, url in made.items() if url == a.url)
    labelled = httpx.put(f"{b.url}/predictions/{first}/label", timeout=10,
                         json={"label": "red", "token": tokens[first]})
    assert labelled.status_code == 200, labelled.text
    shown = httpx.get(f"{a.url}/predictions/{first}", timeout=10)
    spent[a.url] += 1
    assert shown.status_code == 200, shown.text
    assert shown.json()["label"] == "red"

    # one budget across both replicas: alternate until the bucket is empty
    answers = []
    for i in range(BURST):
        replica = (a, b)[i % 2]
        response = _predict(replica, "red", 100 + i)
        answers.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) > 60  # 12/hour: minutes, not seconds
            assert response.json()["error"] == "rate_limited"
            break
        spent[replica.url] += 1
    assert answers[-1] == 429, answers
    assert sum(spent.values()) == BURST  # the refusal came at the client's 13th request
    assert max(spent.values()) < BURST  # though no replica alone had used the budget up
    # and the other replica refuses too: the bucket is shared, not per process
    other = (a, b)[len(answers) % 2]
    assert _predict(other, "red", 999).status_code == 429
