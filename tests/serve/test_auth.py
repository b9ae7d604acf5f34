"""API keys (hashed at rest), JWT bearer tokens, scopes and per-client rate limits."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.serve.conftest import learnable_png
from visiondeck.serve.api.auth import KeyRing


@pytest.fixture
def keys(tmp_path):
    ring = KeyRing(tmp_path / "keys.json")
    _, predict_key = ring.add("app", ("predict",))
    _, admin_key = ring.add("ops", ("predict", "admin"))
    return ring, predict_key, admin_key


def test_keys_are_hashed_at_rest(keys) -> None:
    ring, predict_key, admin_key = keys
    stored = ring.path.read_text()
    assert predict_key not in stored and admin_key not in stored
    assert json.loads(stored)["keys"][0]["hash"]
    assert ring.path.stat().st_mode & 0o077 == 0  # readable by the owner only
    assert ring.verify(predict_key).scopes == ("predict",)
    assert ring.verify(predict_key[:-1] + ("A" if predict_key[-1] != "A" else "B")) is None


def test_admin_always_needs_a_key(make_client, keys) -> None:
    ring, predict_key, admin_key = keys
    client = make_client(api_keys_file=ring.path)
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"X-API-Key": predict_key}).status_code == 403
    ok = client.post("/admin/reload", headers={"Authorization": f"Bearer {admin_key}"})
    assert ok.status_code == 200 and ok.json()["swapped"] is False
    # predictions stay open by default (the seeds' curl example works)
    assert client.post("/predict", files={"file": learnable_png("left")}).status_code == 200


def test_require_key_for_predictions_and_revocation(make_client, keys) -> None:
    ring, predict_key, _ = keys
    client = make_client(api_keys_file=ring.path, require_api_key=True)
    image = {"file": learnable_png("left")}
    refused = client.post("/predict", files=image)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"
    assert client.get("/predictions").status_code == 401
    assert client.post("/predict", files=image, headers={"X-API-Key": "vd_nope_x"}
                       ).status_code == 401
    assert client.post("/predict", files=image, headers={"Authorization": "Basic abc"}
                       ).status_code == 401
    assert client.post("/predict", files=image, headers={"X-API-Key": predict_key}
                       ).status_code == 200
    key_id = ring.verify(predict_key).id
    assert KeyRing(ring.path).revoke(key_id)
    time.sleep(1.1)  # the server re-reads the key file at most once a second
    assert client.post("/predict", files=image, headers={"X-API-Key": predict_key}
                       ).status_code == 401
    assert client.get("/health").status_code == 200  # health never needs a key


def test_jwt_hs256(make_client) -> None:
    import jwt

    secret = "s3cret-for-tests-" + "x" * 32
    client = make_client(jwt_secret=secret, require_api_key=True)
    image = {"file": learnable_png("left")}

    def token(key=secret, algorithm="HS256", **claims) -> str:
        payload = {"sub": "alice", "scope": "predict", "exp": int(time.time()) + 60} | claims
        return jwt.encode(payload, key, algorithm=algorithm)

    def call(tok: str):
        return client.post("/predict", files=image, headers={"Authorization": f"Bearer {tok}"})

    assert call(token()).status_code == 200
    assert call(token(exp=int(time.time()) - 10)).json()["detail"] == "the token has expired"
    assert call(token(key="another-secret-of-enough-length-1234567890")).status_code == 401
    assert call(token(algorithm="HS512")).status_code == 401  # only HS256 accepted
    unsigned = jwt.encode({"sub": "eve", "scope": "predict admin",
                           "exp": int(time.time()) + 60}, None, algorithm="none")
    assert call(unsigned).status_code == 401
    no_exp = jwt.encode({"sub": "bob", "scope": "predict"}, secret, algorithm="HS256")
    assert call(no_exp).status_code == 401
    assert client.post("/admin/reload", headers={
        "Authorization": f"Bearer {token()}"}).status_code == 403
    assert client.post("/admin/reload", headers={
        "Authorization": f"Bearer {token(scope='admin')}"}).status_code == 200


def test_rate_limit_in_process(make_client) -> None:
    client = make_client(rate_limit="2/minute")
    image = {"file": learnable_png("left")}
    assert [client.post("/predict", files=image).status_code for _ in range(2)] == [200, 200]
    limited = client.post("/predict", files=image)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert client.get("/health").status_code == 200  # only predictions are limited
    assert 'visiondeck_errors_total{kind="rate_limited"} 1.0' in client.get("/metrics").text


def _require_redis() -> None:
    """Fail (never skip) when the machine's Redis does not answer: the rest of the suite
    needs it too (tests/servers.py), and a skipped test is a feature nobody checked."""
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at 127.0.0.1:6379 is not usable ({exc}); start it with "
                    "scripts/start-services.sh", pytrace=False)


def test_rate_limit_shared_through_redis(make_client) -> None:
    import redis

    _require_redis()
    prefix = f"vdtest:{uuid.uuid4().hex}:"
    settings = {"rate_limit": "3/minute", "redis_url": "redis://127.0.0.1:6379/0"}
    replicas = [make_client(**settings), make_client(**settings)]
    for replica in replicas:
        replica.app.state.services.limiter.redis.prefix = prefix
    image = {"file": learnable_png("left")}
    try:
        codes = [replicas[i % 2].post("/predict", files=image).status_code for i in range(4)]
        assert codes == [200, 200, 200, 429]  # one bucket for both replicas
        assert replicas[0].app.state.services.limiter.backend == "redis"
    finally:
        plain = redis.Redis(host="127.0.0.1", port=6379)
        for key in plain.scan_iter(f"{prefix}*"):
            plain.delete(key)


def test_rate_limit_survives_redis_outage(make_client) -> None:
    client = make_client(rate_limit="2/minute", redis_url="redis://127.0.0.1:1/0")
    image = {"file": learnable_png("left")}
    codes = [client.post("/predict", files=image).status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # Redis unreachable: limited per process instead


def test_label_tokens_are_the_documented_hmac(make_client) -> None:
    """A label token is HMAC-SHA256(key, id), first 32 hex digits: tokens handed out before
    an upgrade must still verify after it."""
    import hashlib
    import hmac

    services = make_client().app.state.services
    for prediction_id in ("0" * 32, "0193a5c4e1b27c3d8e9f0a1b2c3d4e5f"):
        expected = hmac.new(services._label_key, prediction_id.encode(),
                            hashlib.sha256).hexdigest()[:32]
        assert services.label_token(prediction_id) == expected
        assert services.check_label_token(prediction_id, expected)
        assert not services.check_label_token(prediction_id, expected[::-1])
