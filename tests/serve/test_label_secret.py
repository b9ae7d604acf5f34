"""One label key for every worker and replica (serve/api/auth.py `load_label_key`).

A label token is HMAC(label key, prediction id): the worker that checks it must hold the
key of the worker that issued it. The key is `label_secret` when configured, else
DATA_DIR/label_secret, made once (mode 0600) by whichever worker starts first and read by
all. The last test runs a real `visiondeck serve --workers 2`.
"""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tests.serve.conftest import learnable_png
from tests.servers import free_port, stop_process, wait_server_ready
from visiondeck.errors import ConfigError
from visiondeck.serve.api.auth import LABEL_SECRET_FILE, load_label_key

FILE_SECRET = "0123456789abcdef" * 4


def _services(make_settings, **changes):
    from visiondeck.serve.services import Services

    return Services.build(make_settings(**changes))


def _token(key: bytes, prediction_id: str) -> str:
    return hmac.new(key, prediction_id.encode(), hashlib.sha256).hexdigest()[:32]


def test_a_configured_secret_wins(make_settings, tmp_path: Path) -> None:
    secret = "s" * 40
    services = _services(make_settings, label_secret=secret, data_dir=tmp_path / "d")
    assert services._label_key == secret.encode()
    assert not (tmp_path / "d" / LABEL_SECRET_FILE).exists()  # nothing written needlessly


def test_the_data_folder_keeps_one_secret_for_every_app(make_settings, tmp_path: Path) -> None:
    data = tmp_path / "shared"
    first = _services(make_settings, data_dir=data)
    second = _services(make_settings, data_dir=data)  # another worker on the same folder
    file = data / LABEL_SECRET_FILE
    assert file.stat().st_mode & 0o777 == 0o600
    text = file.read_text().strip()
    assert len(text) == 64 and int(text, 16) >= 0
    prediction_id = "0193a5c4e1b27c3d8e9f0a1b2c3d4e5f"
    token = first.label_token(prediction_id)
    assert token == _token(text.encode(), prediction_id)
    assert second.check_label_token(prediction_id, token)
    # the file's text is a valid VISIONDECK_LABEL_SECRET: moving to a configured secret
    # keeps the tokens already handed out
    moved = _services(make_settings, label_secret=text, data_dir=tmp_path / "other")
    assert moved.check_label_token(prediction_id, token)


def _race(folder: str, barrier, results) -> None:
    barrier.wait()
    results.put(load_label_key(None, Path(folder)))


def test_workers_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    """Eight processes released at once on an empty folder, four times over: one secret,
    read whole by all, and no temporary file left behind."""
    context = multiprocessing.get_context("fork")  # started in milliseconds, so they collide
    for round_ in range(4):
        folder = tmp_path / f"round{round_}"
        barrier, results = context.Barrier(8), context.Queue()
        workers = [context.Process(target=_race, args=(str(folder), barrier, results))
                   for _ in range(8)]
        for worker in workers:
            worker.start()
        keys = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(30)
            assert worker.exitcode == 0
        assert len(set(keys)) == 1 and len(keys[0]) == 64
        assert os.listdir(folder) == [LABEL_SECRET_FILE]
        assert (folder / LABEL_SECRET_FILE).read_bytes().strip() == keys[0]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620], ids=oct)
def test_a_secret_file_others_can_reach_is_refused(make_settings, tmp_path: Path,
                                                   mode: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    file = data / LABEL_SECRET_FILE
    file.write_text(FILE_SECRET + "\n")
    file.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        _services(make_settings, data_dir=data)
    assert f"chmod 600 {file}" in str(refused.value)
    file.chmod(0o600)
    assert _services(make_settings, data_dir=data)._label_key == FILE_SECRET.encode()


def test_weak_or_unusable_secrets_stop_the_start(make_settings, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        make_settings(label_secret="change-me")  # guessable offline from any token
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(ConfigError) as unwritable:
        _services(make_settings, data_dir=blocked / "data", store=False)
    assert "VISIONDECK_LABEL_SECRET" in str(unwritable.value)
    data = tmp_path / "data"
    data.mkdir()
    (data / LABEL_SECRET_FILE).write_text("short\n")
    (data / LABEL_SECRET_FILE).chmod(0o600)
    with pytest.raises(ConfigError, match="fewer than 32"):
        _services(make_settings, data_dir=data)


# --------------------------------------------------------------- a real two-worker server


def _predict(base: str, seed: int) -> dict:
    """One prediction on a fresh connection (so the workers share them); a worker still
    loading its model answers 503, and the next try may meet the other one."""
    deadline = time.monotonic() + 120
    while True:
        response = httpx.post(f"{base}/predict", files={"file": learnable_png("left", seed=seed)},
                              timeout=30)
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.2)


def test_two_workers_accept_each_others_label_tokens(serve_bundle: Path,
                                                     tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONDECK_")}
    env |= {"VISIONDECK_WATCH_INTERVAL_S": "0", "VISIONDECK_PREPROCESS_THREADS": "1",
            "VISIONDECK_INTRA_OP_THREADS": "1", "OMP_NUM_THREADS": "1",
            "VISIONDECK_MONITOR": "false", "VISIONDECK_EXPLAIN": "false"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "visiondeck", "serve", str(serve_bundle), "--port", str(port),
             "--workers", "2", "--data-dir", str(data), "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            start_new_session=True)
    try:
        wait_server_ready(process, base, log)
        made = [_predict(base, seed) for seed in range(30)]
        key = (data / LABEL_SECRET_FILE).read_bytes().strip()
        assert (data / LABEL_SECRET_FILE).stat().st_mode & 0o777 == 0o600
        # every worker signed with the one file's key (a key of its own would differ)
        assert [p["label_token"] for p in made] == [_token(key, p["id"]) for p in made]
        # a worker labels only rows that are written; wait until both writers wrote theirs
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            total = httpx.get(f"{base}/predictions?limit=1", timeout=10).headers["x-total-count"]
            if int(total) == len(made):
                break
            time.sleep(0.2)
        codes = [httpx.put(f"{base}/predictions/{p['id']}/label", timeout=10,
                           json={"label": "left", "token": p["label_token"]}).status_code
                 for p in made]
        assert codes == [200] * len(made)
        forged = _token(b"another-secret-of-at-least-32-characters", made[0]["id"])
        refused = httpx.put(f"{base}/predictions/{made[0]['id']}/label", timeout=10,
                            json={"label": "right", "token": forged})
        assert refused.status_code == 401
        labelled = httpx.get(f"{base}/predictions?labelled=true&limit=100", timeout=10).json()
        assert labelled["total"] == len(made)
        assert {row["label"] for row in labelled["items"]} == {"left"}
    finally:
        stop_process(process, grace=30)
    assert process.returncode is not None
