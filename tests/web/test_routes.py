"""The page routes without a browser: what the server renders, its headers and its limits."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.serve.conftest import started_clients
from visiondeck.serve.routes.pages import CSP, PAGES
from visiondeck.serve.services import STATIC_DIR, TEMPLATES_DIR

PATHS = [href for _, href, _ in PAGES]


@pytest.fixture
def make_client(web_bundle: Path, tmp_path: Path):
    from visiondeck.serve.settings import ServeSettings

    with started_clients() as start:
        def make(**changes) -> TestClient:
            values = {"bundle": str(web_bundle), "data_dir": tmp_path / "data",
                      "watch_interval_s": 0, "preprocess_threads": 1, "intra_op_threads": 1}
            values.update(changes)
            return start(ServeSettings(**values))

        yield make


def _copy(web_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(web_bundle, tmp_path / "bundle"))


def _page_data(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', html, re.S)
    assert match, "no page data"
    return json.loads(match.group(1))


@pytest.mark.parametrize("path", PATHS)
def test_every_page_renders_with_a_strict_policy(make_client, path: str) -> None:
    client = make_client()
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    assert "script-src 'self';" in CSP and "unsafe-inline" not in CSP
    assert response.headers["x-frame-options"] == "DENY"
    html = response.text
    assert re.search(rf'<a href="{re.escape(path)}" aria-current="page">', html)
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handler
    assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)", html)  # no inline JS
    assert ' style="' not in html
    data = _page_data(html)
    assert data["classes"] == ["left", "middle", "right"] and data["page"]
    assert data["max_upload_bytes"] == 10 * 1024 * 1024 and data["store"] is True


def test_pages_are_not_in_the_api_schema(make_client) -> None:
    paths = make_client().get("/openapi.json").json()["paths"]
    assert not {"/history", "/compare", "/model-card", "/monitor", "/favicon.ico"} & set(paths)
    assert "/predictions" in paths


def test_static_files_and_favicon(make_client) -> None:
    client = make_client()
    script = client.get("/static/js/predict.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert client.get("/static/css/app.css").headers["content-type"].startswith("text/css")
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    for name in re.findall(r'(?:src|href)="/static/([^"]+)"',
                           (TEMPLATES_DIR / "base.html").read_text()):
        assert client.get(f"/static/{name}").status_code == 200, name


def test_nothing_is_fetched_from_the_internet() -> None:
    """Every asset is local: no URL to another host in templates, scripts or styles."""
    files = [*TEMPLATES_DIR.glob("*.html"), *STATIC_DIR.rglob("*.js"), *STATIC_DIR.rglob("*.css"),
             *STATIC_DIR.rglob("*.svg")]
    assert len(files) > 10
    for file in files:
        text = file.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        text = text.replace('"http://www.w3.org/2000/svg"', "")  # the SVG namespace, not a fetch
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), file.name
        assert "@import" not in text and "fonts.googleapis" not in text


def test_class_names_are_escaped(make_client, web_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(web_bundle, tmp_path)
    info = json.loads((bundle / "bundle.json").read_text())
    evil = '<script>alert("x")</script>'
    info["classes"] = ["left", evil, "right"]
    info["data"]["train_counts"] = {"left": 1, evil: 2, "right": 3}
    (bundle / "bundle.json").write_text(json.dumps(info))
    client = make_client(bundle=str(bundle))
    for path in ("/", "/history", "/model-card"):
        html = client.get(path).text
        assert evil not in html, path
        assert _page_data(html)["classes"][1] == evil  # the JSON block keeps it, inertly
    card = client.get("/model-card").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in card


def test_model_card_reads_the_bundle(make_client, web_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(web_bundle, tmp_path)
    (bundle / "bench.json").write_text(json.dumps({
        "rows": [{"engine": "onnxruntime-fp32", "p50_ms": 0.25, "p95_ms": 0.3, "p99_ms": 0.41,
                  "images_per_s": 1234.6, "best_batch": 32, "accuracy": 0.9}],
        "threads": 2, "machine": {"processor": "TestCPU", "cpu_count": 2},
        "created_at": "2025-01-01T00:00:00Z"}))
    html = make_client(bundle=str(bundle)).get("/model-card").text
    assert "onnxruntime-fp32" in html and "1235" in html and "TestCPU" in html
    info = json.loads((bundle / "bundle.json").read_text())
    assert f"{info['metrics']['accuracy']:.4f}" in html and "Macro F1" in html
    counts = info["evaluation"]["confusion_matrix"]["counts"]
    assert html.count('class="cm-count') == len(counts) ** 2
    assert "no confusion matrix" not in html and "no speed figures" not in html


def test_model_card_says_what_is_missing(make_client, web_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(web_bundle, tmp_path)
    info = json.loads((bundle / "bundle.json").read_text())
    info["evaluation"]["confusion_matrix"] = {"counts": [[1, 2], [3, 4]]}  # 2×2 for 3 classes
    (bundle / "bundle.json").write_text(json.dumps(info))
    (bundle / "bench.json").write_text("{ not json")
    html = make_client(bundle=str(bundle)).get("/model-card").text
    assert "it is not 3×3 counts" in html and "ignored the Bundle&#39;s bench.json" in html
    del info["evaluation"]
    (bundle / "bundle.json").write_text(json.dumps(info))
    (bundle / "bench.json").unlink()
    html = make_client(bundle=str(bundle), data_dir=tmp_path / "d2").get("/model-card").text
    assert "carries no confusion matrix" in html and "visiondeck bench BUNDLE" in html


def test_pages_without_a_model(make_client, tmp_path: Path) -> None:
    client = make_client(bundle=str(tmp_path / "missing"))
    for path in PATHS:
        response = client.get(path)
        assert response.status_code == 200, path
        assert "The model is not loaded." in response.text and "not a Bundle" in response.text
    assert "no card to show" in client.get("/model-card").text


def test_api_key_field_only_when_required(make_client, tmp_path: Path) -> None:
    assert 'id="api-key-form"' not in make_client().get("/").text
    keyed = make_client(require_api_key=True, data_dir=tmp_path / "keyed")
    html = keyed.get("/history").text
    assert 'id="api-key-form"' in html and _page_data(html)["require_api_key"] is True
    assert keyed.get("/predictions").status_code == 401  # the page itself stays public


def test_visiondeck_serve_serves_the_page(web_bundle: Path, tmp_path: Path) -> None:
    """The real command: the page and its assets come from the installed package, no torch."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.servers import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONDECK_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "visiondeck", "serve", str(web_bundle), "--port", str(port),
         "--data-dir", str(tmp_path / "data"), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "visiondeck serve did not get ready"
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        html = httpx.get(f"{base}/").text
        assert "Choose images to classify" in html
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            assert httpx.get(base + asset).status_code == 200, asset
        for path in PATHS:
            assert httpx.get(base + path).status_code == 200, path
        assert httpx.get(f"{base}/ready").json()["torch_loaded"] is False
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
