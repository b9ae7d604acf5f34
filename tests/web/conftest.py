"""Fixtures of the browser tests: a real `visiondeck` server on loopback, and headless Chromium.

The server is `create_app(settings)` under uvicorn in a thread of the test process, on a
free port, serving a private copy of the shared tiny Bundle (with a bench.json measured by
`bench_bundle`), its SQLite history in a temporary folder, drift monitoring on. A second
server (monitoring off) serves the Monitor page a fixed summary, to check the drawing.
The browser is Debian's `chromium` driven by `chromedriver` through Selenium (no browser
download). When the
browser is missing the tests fail with the command that installs it; they skip only when
VISIONDECK_SKIP_BROWSER=1 is set on purpose.

Screenshots go to $VISIONDECK_SCREENSHOTS (or a temporary folder): `page.snap(name)`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import free_port

CHROMIUM = Path(os.environ.get("VISIONDECK_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("VISIONDECK_CHROMEDRIVER", "/usr/bin/chromedriver"))
MAX_UPLOAD = 256 * 1024  # small, so a "too big" file is quick to make
WAIT_S = 20.0


@pytest.fixture(scope="session")
def web_bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny run, evaluated and exported (16 px RGB; classes left, middle, right).

    Evaluated first so the Bundle carries real test metrics and calibration; the run's real
    confusion matrix is then written into bundle.json as `evaluation.confusion_matrix`,
    which the model card draws when a Bundle has it (export does not copy it yet).
    """
    from visiondeck.evaluate import evaluate_run
    from visiondeck.export.onnx_export import export_run

    base = tmp_path_factory.mktemp("web-bundle")
    run = Path(shutil.copytree(trained_run, base / "run"))
    evaluated = evaluate_run(run, report=False, n_boot=50)
    bundle = export_run(run, base / "bundle", parity_images=8).path
    info = json.loads((bundle / "bundle.json").read_text())
    info["evaluation"] = {"split": evaluated.split,
                          "confusion_matrix": evaluated.metrics["confusion_matrix"]}
    (bundle / "bundle.json").write_text(json.dumps(info, indent=2))
    return bundle


# ----------------------------------------------------------------------------- the server


@dataclass
class LiveServer:
    url: str
    app: Any
    bundle: Path
    admin_key: str
    monitor: dict[str, Any] = field(default_factory=dict)

    @property
    def services(self) -> Any:
        return self.app.state.services

    def flush(self) -> None:
        """Wait until queued history rows are written (the writer is asynchronous)."""
        assert self.services.writer.flush(10)


def contract_monitor_router(state: dict[str, Any]) -> Any:
    """GET /monitor/summary answering `state["summary"]` (a fixed body of the documented
    shape, so the drawing can be checked exactly), or, when it is None, the real endpoint."""
    from fastapi import APIRouter, Depends
    from fastapi.responses import JSONResponse

    from visiondeck.serve.api.deps import get_services, predict_caller
    from visiondeck.serve.routes.monitor import monitor_summary

    router = APIRouter()

    @router.get("/monitor/summary")
    async def summary(services=Depends(get_services),  # noqa: B008 (FastAPI's idiom)
                      caller=Depends(predict_caller)) -> JSONResponse:  # noqa: B008
        if state.get("summary") is None:
            return await monitor_summary(services, caller)
        return JSONResponse(state["summary"])

    return router


def _bench(bundle: Path) -> None:
    from visiondeck.export.bench import bench_bundle, save_bench

    save_bench(bench_bundle(bundle, batch_sizes=(1, 4), seconds=0.05, threads=1))


def _settings(bundle: Path, base: Path, **changes: Any) -> Any:
    from visiondeck.serve.settings import ServeSettings

    values: dict[str, Any] = {
        "bundle": str(bundle), "data_dir": base / "data", "watch_interval_s": 0,
        "preprocess_threads": 2, "intra_op_threads": 1, "max_upload_bytes": MAX_UPLOAD,
        "api_keys_file": base / "keys.json", "monitor_min_window": 5}
    values.update(changes)
    return ServeSettings(**values)


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Run `app` under uvicorn on a free loopback port in a thread; yield its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"web-test-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the VisionDeck server did not start (see the log above)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def live_server(web_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[LiveServer]:
    """The server as `visiondeck serve` builds it (default routers, monitoring on)."""
    from visiondeck.serve.api.auth import KeyRing
    from visiondeck.serve.app import create_app

    base = tmp_path_factory.mktemp("web-server")
    bundle = Path(shutil.copytree(web_bundle, base / "bundle"))
    _bench(bundle)
    _, admin_key = KeyRing(base / "keys.json").add("ops", ("admin",))
    app = create_app(_settings(bundle, base))
    with _serve(app) as url:
        yield LiveServer(url, app, bundle, admin_key)


@pytest.fixture(scope="module")
def contract_server(web_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[LiveServer]:
    """A server with monitoring off whose /monitor/summary a test can set (see above)."""
    from visiondeck.serve.app import create_app
    from visiondeck.serve.routes import DEFAULT_ROUTERS

    base = tmp_path_factory.mktemp("web-contract")
    state: dict[str, Any] = {"summary": None}
    app = create_app(_settings(web_bundle, base, monitor=False),
                     routers=[contract_monitor_router(state), *DEFAULT_ROUTERS])
    with _serve(app) as url:
        yield LiveServer(url, app, web_bundle, "", state)


@pytest.fixture(scope="module")
def keyed_server(web_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[LiveServer]:
    """A server that wants an API key for predictions; `admin_key` holds a valid one."""
    from visiondeck.serve.api.auth import KeyRing
    from visiondeck.serve.app import create_app

    base = tmp_path_factory.mktemp("web-keyed")
    _, key = KeyRing(base / "keys.json").add("web", ("predict",))
    app = create_app(_settings(web_bundle, base, require_api_key=True, monitor=False))
    with _serve(app) as url:
        yield LiveServer(url, app, web_bundle, key)


# ---------------------------------------------------------------------------- the browser


def _browser_missing() -> str | None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return None
    return (f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver "
            f"(`bash scripts/install-system-deps.sh`, which `make test` runs)")


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("VISIONDECK_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    problem = _browser_missing()
    if problem:
        if os.environ.get("VISIONDECK_SKIP_BROWSER") == "1":
            pytest.skip(problem + " (skipped: VISIONDECK_SKIP_BROWSER=1)")
        pytest.fail(problem)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1280,900",
                 "--disable-extensions", "--no-first-run", "--disable-sync",
                 "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
        "safebrowsing.enabled": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    browser.execute_cdp_cmd("Browser.setDownloadBehavior",
                            {"behavior": "allow", "downloadPath": str(downloads)})
    browser.downloads = downloads
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """The browser pointed at the live server, with the waits and checks the tests share."""

    def __init__(self, driver: Any, server: LiveServer, screenshots: Path) -> None:
        self.driver = driver
        self.server = server
        self.screenshots = screenshots

    def open(self, path: str) -> None:
        self.driver.get(self.server.url + path)
        self.wait(lambda: self.driver.execute_script("return document.readyState") == "complete")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait(self, condition: Callable[[], Any], timeout: float = WAIT_S, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
                if value:
                    return value
            except Exception as exc:  # stale element while the page redraws
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or condition}"
                             + (f" (last error: {last!r})" if last else ""))

    def text(self, css: str) -> str:
        return self.find(css).text

    def snap(self, name: str, full: bool = True) -> Path:
        """Save a PNG of the page (the whole page when `full`) as SCREENSHOTS/name.png."""
        target = self.screenshots / f"{name}.png"
        params: dict[str, Any] = {"format": "png"}
        if full:
            size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000),
                "scale": 1})
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", params)
        target.write_bytes(base64.b64decode(shot["data"]))
        return target

    def console_errors(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """Severe browser console entries (JS errors, CSP refusals) not matching `allowed`."""
        entries = self.driver.get_log("browser")
        return [e["message"] for e in entries if e["level"] == "SEVERE"
                and not any(a in e["message"] for a in allowed)]


def fresh_page(driver: Any, server: LiveServer, screenshot_dir: Path) -> Page:
    """A fresh view of `server`: theme and API key forgotten, desktop size, no emulated
    colour scheme, console emptied (every page fixture starts from this)."""
    driver.set_window_size(1280, 900)
    driver.get(server.url + "/health")
    driver.execute_script("window.localStorage.clear()")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})
    driver.get_log("browser")
    return Page(driver, server, screenshot_dir)


@pytest.fixture
def page(driver: Any, live_server: LiveServer, screenshot_dir: Path) -> Iterator[Page]:
    yield fresh_page(driver, live_server, screenshot_dir)
