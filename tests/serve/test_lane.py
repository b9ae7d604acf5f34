"""The /predict lane: same answers as the route, refusals before reading, and its parser.

test_api.py and test_inputs.py run every request shape and every bad input through both
the lane and the FastAPI route; this module checks what is specific to the lane.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.serve.conftest import learnable_png

# ----------------------------------------------------------------------- the multipart split


def _body(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und4ry") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                + ("Content-Type: image/png\r\n" if filename is not None else "")
                + "\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _full_parse(body: bytes, boundary: str) -> list[tuple[str, str | None, bytes]]:
    from visiondeck.serve.api.bodies import _parse_form_fully

    parts = asyncio.run(_parse_form_fully(f"multipart/form-data; boundary={boundary}", body, 8))
    return [(p.name, p.filename, p.data) for p in parts]


@pytest.mark.parametrize("parts", [
    [("image", "cat.png", b"\x89PNG\r\n\x1a\nDATA")],
    [("file", "a b;c.png", b"x" * 5000), ("label", None, "Sneaker é".encode())],
    [("files", "1.png", b"one"), ("files", "2.png", b"--b0und4r\r\n"), ("files", "", b"")],
    [("label", None, b"")],
], ids=["curl", "label-and-odd-filename", "several-and-near-boundary", "empty-field"])
def test_the_split_agrees_with_python_multipart(parts) -> None:
    from visiondeck.serve.api.bodies import split_multipart

    body = _body(parts)
    fast = split_multipart(body, b"b0und4ry")
    assert fast is not None
    assert [(p.name, p.filename, p.data) for p in fast] == _full_parse(body, "b0und4ry") == [
        (name, filename, data) for name, filename, data in parts]


@pytest.mark.parametrize("body", [
    b"preamble\r\n" + _body([("image", "x.png", b"abc")]),  # a preamble
    _body([("image", "x.png", b"abc")])[:-12],  # no closing delimiter
    _body([("image", 'a\\"b.png', b"abc")]),  # an escaped quote
    _body([("image", "x.png", b"abc")]).replace(b"Content-Disposition", b"Content-Disposition ",
                                                  1).replace(b"form-data", b"attachment", 1),
    _body([("image", "x.png", b"abc")]).replace(b"\r\nContent-Type: image/png", b"\r\nbroken"),
    _body([("f", "x.png", b"a")] * 17),  # more parts than a form may have
], ids=["preamble", "unclosed", "escaped-quote", "not-form-data", "header-without-colon",
        "too-many-parts"])
def test_the_split_declines_what_it_does_not_fully_understand(body) -> None:
    from visiondeck.serve.api.bodies import split_multipart

    assert split_multipart(body, b"b0und4ry") is None


def test_declined_bodies_still_get_the_full_parser(client) -> None:
    """An escaped quote in a file name is valid: the fallback parser reads the image."""
    body = _body([("image", 'my \\"best\\".png', learnable_png("left"))])
    response = client.post("/predict", content=body,
                           headers={"content-type": "multipart/form-data; boundary=b0und4ry"})
    assert response.status_code == 200, response.text
    garbage = client.post("/predict", content=b"--b0und4ry\r\nno headers at all",
                          headers={"content-type": "multipart/form-data; boundary=b0und4ry"})
    assert garbage.status_code in (400, 422) and garbage.json()["error"] in (
        "bad_multipart", "no_image")


# ----------------------------------------------------------------------- the lane itself


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

    from visiondeck.serve.api.fast_predict import PredictLane
    from visiondeck.serve.app import create_app

    def front(**changes) -> list[object]:
        layer, kinds = create_app(make_settings(**changes)).front_stack(), []
        while hasattr(layer, "app"):
            kinds.append(type(layer))
            layer = layer.app
        return [*kinds, layer.__func__]  # the innermost: FastAPI's own entry point

    assert front(fast_lane=True) == [PredictLane, FastAPI.__call__]
    assert front(fast_lane=True, cors_origins=["https://a.example"]) == [
        CORSMiddleware, PredictLane, FastAPI.__call__]
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
