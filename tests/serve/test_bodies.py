"""Request bodies: multipart through python-multipart, in linear time; slow bodies timed out
and never counted in flight; client input never a 5xx."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.serve.conftest import learnable_png


@pytest.fixture(params=[True, False], ids=["lane", "route"])
def serve_lane(request: pytest.FixtureRequest) -> bool:
    """Every rule here holds for the fast path and the FastAPI route alike."""
    return request.param


def _form(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und4ry") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                + ("Content-Type: image/png\r\n" if filename is not None else "")
                + "\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _read(body: bytes, chunk: int, *, max_files: int = 8, content_type: str | None = None):
    from visiondeck.serve.api.bodies import BodyRules, read_images

    pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
                for i, p in enumerate(pieces)]

    async def receive() -> dict:
        return messages.pop(0)

    rules = BodyRules(limit=1 << 20, max_files=max_files, max_file_bytes=1 << 16,
                      timeout_s=5.0)
    return asyncio.run(read_images(
        receive, content_type or "multipart/form-data; boundary=b0und4ry", None, rules))


@pytest.mark.parametrize("parts", [
    [("image", "cat.png", b"\x89PNG\r\n\x1a\nDATA")],
    [("file", "a b;c.png", b"x" * 5000), ("label", None, "Sneaker é".encode())],
    [("files", "1.png", b"one"), ("files", "2.png", b"--b0und4r\r\n"), ("files", "3", b"3")],
    [("notes", None, b"ignored"), ("image", 'my \\"best\\".png', b"png")],
], ids=["curl", "label-and-odd-filename", "near-boundary", "other-field-and-escaped-quote"])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 20], ids=["1-byte", "7-byte", "whole"])
def test_multipart_parts_are_read_whatever_the_chunking(parts, chunk) -> None:
    uploads, label = _read(_form(parts), chunk)
    files = [(p[1], p[2]) for p in parts if p[1] is not None]
    assert [(u.name, u.data) for u in uploads] == [
        (name.replace('\\"', '"'), data) for name, data in files]
    labels = [p[2].decode() for p in parts if p[0] == "label"]
    assert label == (labels[0] if labels else None)


@pytest.mark.parametrize(("body", "error"), [
    (_form([("image", "x.png", b"abc")]), None),
    # python-multipart refuses a preamble (RFC 2046 allows one; no HTTP client writes one)
    (b"preamble\r\n" + _form([("image", "x.png", b"abc")]), "bad_multipart"),
    (_form([("image", "x.png", b"abc")])[:-12], "bad_multipart"),  # no closing delimiter
    (_form([("image", "x.png", b"abc")]).replace(b"form-data", b"attachment", 1),
     "bad_multipart"),
    (_form([("image", "x.png", b"abc")]).replace(b"\r\nContent-Type: image/png", b"\r\nbroken"),
     "bad_multipart"),
    (_form([("f", "x.png", b"a")] * 30), "bad_multipart"),  # more parts than a form may have
    (_form([("image", "x.png", b"a")] * 9), "too_many_files"),
    (_form([("image", "x.png", b"a" * 70_000)]), "too_large"),
], ids=["plain", "preamble", "unclosed", "not-form-data", "header-without-colon", "too-many-parts",
        "too-many-files", "file-too-large"])
def test_multipart_refusals(body, error) -> None:
    from visiondeck.serve.errors import ServeError

    if error is None:
        uploads, _label = _read(body, 64)
        assert [u.data for u in uploads] == [b"abc"]
        return
    with pytest.raises(ServeError) as caught:
        _read(body, 64)
    assert caught.value.code == error


def test_multipart_needs_a_boundary() -> None:
    from visiondeck.serve.errors import ServeError

    for content_type in ("multipart/form-data", "multipart/form-data; boundary=",
                         "multipart/form-data; boundary=" + "x" * 71):
        with pytest.raises(ServeError) as caught:
            _read(_form([("image", "x.png", b"abc")]), 64, content_type=content_type)
        assert caught.value.code == "bad_multipart"


def _pathological(reps: int) -> bytes:
    """The part header that made the old hand-written splitter's regular expression
    backtrack exponentially: 23 repetitions held the event loop for 2.4 s and every 4 more
    bytes doubled it."""
    header = "form-data" + " ;a=" * reps + ' "'
    return (b"--b0und4ry\r\nContent-Disposition: " + header.encode()
            + b"\r\n\r\nabc\r\n--b0und4ry--\r\n")


@pytest.mark.parametrize("path", ["/predict", "/predict/batch", "/explain"])
def test_pathological_part_headers_are_refused_in_linear_time(client, path) -> None:
    """800 repetitions: the old pattern would need ~2^200 steps; the parser answers at once.
    (The bound is generous: it holds on a loaded machine, and fails only for the
    non-linear kind.)"""
    started = time.perf_counter()
    response = client.post(path, content=_pathological(800), headers={
        "content-type": "multipart/form-data; boundary=b0und4ry"})
    assert time.perf_counter() - started < 10.0
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_multipart"


def test_every_body_kind_refuses_deep_json_with_400(client) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/predict", "/predict/batch", "/explain"):
        response = client.post(path, content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"] == "bad_json"
    ok = client.post("/predict", files={"image": ("l.png", learnable_png("left"))})
    label = client.put(f"/predictions/{ok.json()['id']}/label", content=deep,
                       headers={"content-type": "application/json"})
    assert label.status_code == 400, label.text  # FastAPI's own body parsing refuses it
    assert label.json()["error"] == "http_400"


@pytest.mark.parametrize("top_k", ["9" * 5000, "1" + "0" * 5000, "-1", "1e3", " 3x"])
def test_absurd_top_k_is_a_422_json_answer(client, top_k) -> None:
    for path in ("/predict", "/predict/batch"):
        field = "files" if path.endswith("batch") else "image"
        response = client.post(path, params={"top_k": top_k},
                               files={field: ("l.png", learnable_png("left"))})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_request"


def test_absurd_content_length_is_refused_not_crashed(client) -> None:
    response = client.post("/predict", content=learnable_png("left"), headers={
        "content-type": "image/png", "content-length": "9" * 5000})
    assert response.status_code < 500


def test_the_trailing_slash_route_answers_directly(client) -> None:
    """The dandelion seed posts to /predict/: answered, not redirected (a 307 reflected the
    Host header into Location)."""
    response = client.post("/predict/", files={"file": ("l.png", learnable_png("left"))},
                           headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 200, response.text
    assert "location" not in response.headers
    assert response.json()["predicted"] == "left"


# ------------------------------------------------------------------- slow bodies, for real


def _trickler(port: int) -> socket.socket:
    """A client that declares a 1,000-byte PNG body and sends one byte of it."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 1000\r\n\r\n\x89")
    return sock


def test_slow_bodies_neither_lock_out_honest_requests_nor_stay_forever(live_server) -> None:
    """Six clients declare a body and send one byte of it, against a server that admits one
    request at a time: honest requests are still answered (bodies are admitted once read),
    and the slow ones get 408 once their 1.5 s are up."""
    import httpx

    port = live_server(max_pending=1, body_timeout_s=1.5)
    slow = [_trickler(port) for _ in range(6)]  # six times the in-flight limit
    time.sleep(0.3)  # they are all in the app, waiting for their bodies
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for _ in range(3):
            response = http.post("/predict", files={"image": ("l.png", learnable_png("left"))})
            assert response.status_code == 200, response.text
    answers = []
    for sock in slow:
        sock.settimeout(15)
        answers.append(sock.recv(65536))
        sock.close()
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"] == "body_timeout"


def test_large_json_bodies_are_parsed_off_the_event_loop(monkeypatch) -> None:
    """A JSON body of megabytes (base64 of a big image) costs milliseconds to parse and
    decode: that work runs in a thread, small bodies stay inline."""
    import base64
    import threading as _threading

    from visiondeck.serve.api import bodies

    seen: list[str] = []
    real = bodies._from_json

    def recording(body, rules):
        seen.append(_threading.current_thread().name)
        return real(body, rules)

    monkeypatch.setattr(bodies, "_from_json", recording)
    loop_thread = _threading.current_thread().name
    small = json.dumps({"image": base64.b64encode(b"x" * 100).decode()}).encode()
    large = json.dumps({"image": base64.b64encode(b"x" * 60_000).decode()}).encode()
    for body in (small, large):
        _read(body, 1 << 20, content_type="application/json")
    assert seen[0] == loop_thread
    assert seen[1] != loop_thread
