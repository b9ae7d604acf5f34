"""The /predict fast path: the same answers as the route, refusals before reading.

test_api.py and test_inputs.py run every request shape and every bad input through both
the fast path ("lane" in their ids) and the FastAPI route; this module checks what is
specific to the fast path. Multipart parsing is tested in test_bodies.py.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.serve.conftest import learnable_png


def _requests_counted(client, path: str = "/predict") -> float:
    text = client.get("/metrics").text
    return sum(float(m.group(1)) for m in re.finditer(
        rf'^visiondeck_http_requests_total{{[^}}]*route="{re.escape(path)}"[^}}]*}} (\S+)$', text,
        re.M))


def test_lane_and_route_give_the_same_answers(make_client) -> None:
    lane, route = make_client(fast_lane=True), make_client(fast_lane=False)
    image = learnable_png("right")
    for kwargs in ({"files": {"image": ("r.png", image)}, "params": {"top_k": 2}},
                   {"content": image, "headers": {"content-type": "image/png"}},
                   {"files": {"image": ("t.txt", b"not an image")}},
                   {"content": b"x", "headers": {"content-type": "text/csv"}},
                   {"files": {"image": ("r.png", image)}, "params": {"top_k": 0}}):
        a, b = lane.post("/predict", **kwargs), route.post("/predict", **kwargs)
        assert a.status_code == b.status_code, (kwargs, a.text, b.text)
        assert a.headers.keys() == b.headers.keys()
        assert a.headers["content-type"] == b.headers["content-type"]
        assert int(a.headers["content-length"]) == len(a.content)
        ja, jb = a.json(), b.json()
        if a.status_code == 200:
            for varying in ("id", "label_token", "latency_ms"):
                ja.pop(varying), jb.pop(varying)
        assert ja == jb
    assert _requests_counted(lane) == _requests_counted(route) == 5  # once each, not twice


def test_invalid_top_k_is_left_to_the_routes_validation(make_client) -> None:
    client = make_client(fast_lane=True)
    response = client.post("/predict", files={"image": ("r.png", learnable_png("left"))},
                           params={"top_k": "many"})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"  # FastAPI's validation, our shape


def test_lane_refuses_by_content_length_without_reading(make_settings) -> None:
    """413 from the declared length alone: the body is never received."""
    from visiondeck.serve.app import create_app

    app = create_app(make_settings(fast_lane=True, max_upload_bytes=1000))
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the lane read a body it should have refused")

    async def send(message: dict) -> None:
        sent.append(message)

    async def call() -> None:
        async with app.router.lifespan_context(app):
            await app({"type": "http", "method": "POST", "path": "/predict", "root_path": "",
                       "query_string": b"", "client": ("127.0.0.1", 1), "server": None,
                       "scheme": "http", "http_version": "1.1",
                       "headers": [(b"content-type", b"image/png"),
                                   (b"content-length", b"99999999")]}, receive, send)

    asyncio.run(call())
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"] == "too_large"


def test_lane_serves_under_a_root_path(make_settings) -> None:
    from fastapi.testclient import TestClient

    from visiondeck.serve.app import create_app

    app = create_app(make_settings(fast_lane=True))
    with TestClient(app, root_path="/vd") as client:
        response = client.post("/vd/predict", files={"image": ("l.png", learnable_png("left"))})
        assert response.status_code == 200, response.text
        assert _requests_counted(client) == 1


def test_the_lane_is_in_front_only_when_on(make_settings) -> None:
    """The lane is the outermost layer, in front of FastAPI itself (CORS, when on, in front
    of the lane); off, /predict goes through FastAPI's whole stack to the route."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    from visiondeck.serve.api.fast_predict import PredictFastPath
    from visiondeck.serve.app import create_app

    def front(**changes) -> list[object]:
        layer, kinds = create_app(make_settings(**changes)).front_stack(), []
        while hasattr(layer, "app"):
            kinds.append(type(layer))
            layer = layer.app
        return [*kinds, layer.__func__]  # the innermost: FastAPI's own entry point

    assert front(fast_lane=True) == [PredictFastPath, FastAPI.__call__]
    assert front(fast_lane=True, cors_origins=["https://a.example"]) == [
        CORSMiddleware, PredictFastPath, FastAPI.__call__]
    assert front(fast_lane=False) == [FastAPI.__call__]


@pytest.mark.parametrize("serve_lane", [True, False], ids=["lane", "route"])
def test_cors_headers_on_predict_answers(make_client, serve_lane) -> None:
    """Browsers on an allowed origin can call /predict whichever layer answers it."""
    client = make_client(cors_origins=["https://app.example"])
    origin = {"Origin": "https://app.example"}
    preflight = client.options("/predict", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-API-Key"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    answer = client.post("/predict", files={"image": ("l.png", learnable_png("left"))},
                         headers=origin)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    refused = client.post("/predict", content=b"not an image", headers={
        **origin, "Content-Type": "application/octet-stream"})
    assert refused.status_code in (415, 422)
    assert refused.headers["access-control-allow-origin"] == "https://app.example"
    other = client.post("/predict", files={"image": ("l.png", learnable_png("left"))},
                        headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("serve_lane", [True, False], ids=["lane", "route"])
def test_an_unexpected_failure_is_a_logged_500_with_the_same_body(make_client, serve_lane,
                                                                   monkeypatch) -> None:
    client = make_client()
    engine = client.app.state.services.engine

    async def broken(data):
        raise RuntimeError("a bug, not the client's doing")

    monkeypatch.setattr(engine, "prepare", broken)
    response = client.post("/predict", files={"image": ("l.png", learnable_png("left"))})
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "detail": "internal error; it has been "
                               "logged", "hint": None}
    assert "a bug" not in response.text
    metrics = client.get("/metrics").text
    assert re.search(r'^visiondeck_errors_total\{kind="internal"\} 1\.0$', metrics, re.M)
