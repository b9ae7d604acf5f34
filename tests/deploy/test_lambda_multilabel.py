"""The Lambda handler with a multi-label Bundle: the same answer shape as the API's /predict.

The Bundle is the colour model of tests/deploy/conftest.py (logits = 8 × channel means)
marked multi-label with a 0.9 threshold per label, so the label sets are known in advance
(red → {red}, yellow → {red, green}, dark → none); the API server answers the same
pictures in tests/serve/test_multilabel_serving.py, and both must agree field by field.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.deploy.conftest import CLASSES
from tests.deploy.test_lambda import _env, call, event, lam  # noqa: F401
from tests.serve.conftest import started_clients
from tests.serve.test_multilabel_serving import EXPECTED, THRESHOLD, make_multilabel, picture


@pytest.fixture(scope="module")
def ml_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_multilabel(tmp_path_factory.mktemp("ml-lambda") / "bundle")


def _post(name: str, top_k: int | None = None) -> tuple[int, dict]:
    ev = event("v2-http-post-json.json")
    ev["body"] = json.dumps({"image": base64.b64encode(picture(name)).decode()})
    ev["isBase64Encoded"] = False
    ev["rawQueryString"] = "" if top_k is None else f"top_k={top_k}"
    ev["queryStringParameters"] = None if top_k is None else {"top_k": str(top_k)}
    return call(ev)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_multilabel_answers(name: str, ml_bundle: Path, monkeypatch: pytest.MonkeyPatch
                            ) -> None:
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(ml_bundle))
    status, body = _post(name, top_k=2)
    assert status == 200, body
    assert body["task"] == "multilabel"
    assert body["predicted_labels"] == EXPECTED[name]
    assert body["predicted"] == "|".join(EXPECTED[name])
    assert [e["class"] for e in body["labels"]] == CLASSES
    assert all(e["threshold"] == THRESHOLD and e["passed"] == (e["probability"] >= THRESHOLD)
               for e in body["labels"])
    assert body["confidence"] == max(e["probability"] for e in body["labels"])
    ranked = sorted(body["labels"], key=lambda e: -e["probability"])
    assert body["top_k"] == [{"class": e["class"], "probability": e["probability"]}
                             for e in ranked[:2]]


def test_the_same_fields_as_the_api(ml_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                    make_client) -> None:
    """Every field the handler answers, the API's /predict answers with the same value
    (latency and the API's own extras aside)."""
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(ml_bundle))
    client = make_client(bundle=str(ml_bundle), store=False)
    for name in EXPECTED:
        status, body = _post(name)
        api = client.post("/predict", files={"file": ("p.png", picture(name), "image/png")}
                          ).json()
        assert status == 200
        for key in body.keys() - {"latency_ms", "model"}:
            assert body[key] == api[key], key
        assert body["model"]["version"] == api["model"]["version"]


@pytest.fixture
def make_client(ml_bundle: Path, tmp_path: Path):
    from visiondeck.serve.settings import ServeSettings

    with started_clients() as start:
        yield lambda **changes: start(ServeSettings(**{
            "data_dir": tmp_path / "data", "watch_interval_s": 0, "intra_op_threads": 1,
            **changes}))
