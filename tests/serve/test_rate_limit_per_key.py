"""Rate limits per API key: independent budgets, a key's own rate, shared through Redis.

The Redis tests use the real server at 127.0.0.1:6379 (`bash scripts/start-services.sh`),
each under a unique key prefix that is deleted afterwards; they fail when Redis is down
(VISIONDECK_SKIP_SERVER_TESTS=1 skips them on a machine without it).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from typer.testing import CliRunner

from tests.serve.conftest import learnable_png
from visiondeck.serve.api.auth import KeyRing

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def ring(tmp_path):
    return KeyRing(tmp_path / "keys.json")


def _predict(client, key: str | None = None):
    headers = {"X-API-Key": key} if key else {}
    return client.post("/predict", files={"file": learnable_png("left")}, headers=headers)


def test_each_key_has_its_own_budget(make_client, ring) -> None:
    _, alice = ring.add("alice", ("predict",))
    _, bob = ring.add("bob", ("predict",))
    client = make_client(api_keys_file=ring.path, rate_limit="2/minute")
    assert [_predict(client, alice).status_code for _ in range(2)] == [200, 200]
    limited = _predict(client, alice)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 30  # a token every 30 s
    # alice's exhausted bucket costs bob nothing, nor anonymous callers (keyed by address)
    assert [_predict(client, bob).status_code for _ in range(2)] == [200, 200]
    assert _predict(client, bob).status_code == 429
    assert [_predict(client).status_code for _ in range(2)] == [200, 200]
    assert _predict(client).status_code == 429
    assert _predict(client, alice).status_code == 429  # still waiting


def test_a_key_can_carry_its_own_rate(make_client, ring) -> None:
    _, slow = ring.add("slow", ("predict",), rate="1/minute")
    _, fast = ring.add("fast", ("predict",), rate="600/minute")
    _, plain = ring.add("plain", ("predict",))
    # no server-wide limit: only the key with a rate of its own is limited
    client = make_client(api_keys_file=ring.path)
    assert [_predict(client, slow).status_code for _ in range(2)] == [200, 429]
    assert int(_predict(client, slow).headers["retry-after"]) > 30
    assert all(_predict(client, plain).status_code == 200 for _ in range(4))
    # a server limit of 1/minute does not cap the key that was given 600/minute
    strict = make_client(api_keys_file=ring.path, rate_limit="1/minute")
    assert all(_predict(strict, fast).status_code == 200 for _ in range(4))
    assert [_predict(strict, plain).status_code for _ in range(2)] == [200, 429]


def test_keys_create_records_a_rate(tmp_path) -> None:
    from visiondeck.cli import app

    runner = CliRunner()
    file = tmp_path / "keys.json"
    made = runner.invoke(app, ["keys", "create", "ci", "--rate", "10/s", "--file", str(file)])
    assert made.exit_code == 0, made.output
    stored = json.loads(file.read_text())["keys"][0]
    assert stored["rate"] == "10/s"
    key = made.stdout.strip().splitlines()[-1]
    entry = KeyRing(file).verify(key)
    assert entry is not None and entry.rate == "10/s"
    listed = runner.invoke(app, ["keys", "list", "--file", str(file)], env={"COLUMNS": "160"})
    assert "10/s" in listed.output
    bad = runner.invoke(app, ["keys", "create", "x", "--rate", "fast", "--file", str(file)])
    assert bad.exit_code != 0 and "COUNT/PERIOD" in bad.output
    assert len(json.loads(file.read_text())["keys"]) == 1  # nothing written for the bad one
    plain = runner.invoke(app, ["keys", "create", "y", "--file", str(file)])
    assert plain.exit_code == 0
    assert "rate" not in json.loads(file.read_text())["keys"][1]  # no rate: server's limit


@pytest.fixture
def redis_prefix():
    """A unique key prefix on the real Redis, deleted after the test."""
    if os.environ.get("VISIONDECK_SKIP_SERVER_TESTS") == "1":
        pytest.skip("VISIONDECK_SKIP_SERVER_TESTS=1")
    import redis

    plain = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        plain.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is needed ({exc}); run scripts/start-services.sh",
                    pytrace=False)
    prefix = f"vdtest:{uuid.uuid4().hex}:"
    yield prefix, plain
    for key in plain.scan_iter(f"{prefix}*"):
        plain.delete(key)
    plain.close()


def test_replicas_share_each_keys_budget_through_redis(make_client, ring, redis_prefix
                                                       ) -> None:
    prefix, plain = redis_prefix
    _, alice = ring.add("alice", ("predict",))
    _, bob = ring.add("bob", ("predict",))
    settings = {"api_keys_file": ring.path, "rate_limit": "3/minute", "redis_url": REDIS_URL,
                "redis_prefix": prefix}
    replicas = [make_client(**settings), make_client(**settings)]
    assert all(r.app.state.services.limiter.backend == "redis" for r in replicas)
    codes = [_predict(replicas[i % 2], alice).status_code for i in range(4)]
    assert codes == [200, 200, 200, 429]  # one bucket for alice across both replicas
    limited = _predict(replicas[1], alice)
    assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 20
    # bob's budget is his own, on either replica
    assert [_predict(replicas[1], bob).status_code for _ in range(3)] == [200, 200, 200]
    assert _predict(replicas[0], bob).status_code == 429
    alice_id = ring.verify(alice).id
    stored = {k.decode() for k in plain.scan_iter(f"{prefix}*")}
    assert stored == {f"{prefix}key:{alice_id}", f"{prefix}key:{ring.verify(bob).id}"}
    assert float(plain.hget(f"{prefix}key:{alice_id}", "tokens")) < 1
    assert 0 < plain.pttl(f"{prefix}key:{alice_id}") <= 61_000  # buckets expire when full


def test_a_keys_own_rate_is_shared_through_redis_too(make_client, ring, redis_prefix
                                                     ) -> None:
    prefix, _ = redis_prefix
    _, slow = ring.add("slow", ("predict",), rate="2/minute")
    settings = {"api_keys_file": ring.path, "redis_url": REDIS_URL, "redis_prefix": prefix}
    replicas = [make_client(**settings), make_client(**settings)]
    codes = [_predict(replicas[i % 2], slow).status_code for i in range(3)]
    assert codes == [200, 200, 429]
    assert _predict(replicas[0]).status_code == 200  # anonymous: no server-wide limit
