"""The Review page in headless Chromium against a real server: digit keys label, arrows
move, C shows the attention map of the kept original, and the labels land in the store.

A server of this module keeps uploads (so originals and Grad-CAM are there); the shared
`live_server` does not, and shows thumbnails with the page saying why.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import learnable_png
from tests.web.conftest import LiveServer, Page, _serve, _settings, fresh_page


@pytest.fixture(scope="module")
def keeping_server(
    web_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """Default routers, monitoring on, uploads kept; `admin_key` has the admin scope."""
    from visiondeck.serve.api.auth import KeyRing
    from visiondeck.serve.app import create_app

    base = tmp_path_factory.mktemp("web-review")
    bundle = Path(shutil.copytree(web_bundle, base / "bundle"))
    _, admin_key = KeyRing(base / "keys.json").add("ops", ("admin",))
    app = create_app(_settings(bundle, base, keep_uploads=base / "uploads"))
    with _serve(app) as url:
        yield LiveServer(url, app, bundle, admin_key)


@pytest.fixture
def review_page(driver: Any, keeping_server: LiveServer, screenshot_dir: Path) -> Page:
    return fresh_page(driver, keeping_server, screenshot_dir)


def _predict(server: LiveServer, *classes: str) -> list[str]:
    ids = []
    for i, cls in enumerate(classes):
        answer = httpx.post(
            server.url + "/predict",
            files={"file": learnable_png(cls, size=48, seed=40 + i)},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        ids.append(answer.json()["id"])
    server.flush()
    for observer in server.services.observers:
        if hasattr(observer, "written"):  # the upload keeper
            observer.flush()
    return ids


def _keys(page: Page, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(page.driver).send_keys(*keys).perform()


def _shown(page: Page) -> str:
    return page.find("#review-item").get_attribute("data-id")


def _label(server: LiveServer, prediction_id: str) -> str | None:
    server.flush()
    record = server.services.store.get(prediction_id)
    assert record is not None
    return record.label


def test_digit_keys_label_and_arrows_move(review_page: Page) -> None:
    from selenium.webdriver.common.keys import Keys

    page, server = review_page, review_page.server
    made = set(_predict(server, "left", "right", "middle"))
    queue = httpx.get(server.url + "/review/queue").json()
    order = [item["id"] for item in queue["items"]]
    assert set(order) == made
    classes = ["left", "middle", "right"]

    page.open("/review")
    page.wait(lambda: _shown(page) == order[0], what="the first of the queue")
    assert page.text("#count-waiting") == "3" and page.text("#count-labelled") == "0"
    page.wait(
        lambda: page.find("#review-stack").get_attribute("data-source") == "original",
        what="the kept original",
    )
    # without an admin key the label rule refuses, and the page says what is needed
    _keys(page, "1")
    page.wait(lambda: "admin" in page.text("#review-label-state"), what="the refusal")
    assert _label(server, order[0]) is None and _shown(page) == order[0]

    loaded = page.js("return document.body.dataset.reviewLoaded")
    page.find("#review-key").send_keys(server.admin_key)
    page.find("#review-key-form button").click()
    page.wait(
        lambda: page.js("return document.body.dataset.reviewLoaded") != loaded,
        what="the queue read again with the key",
    )
    assert _shown(page) == order[0] and page.text("#count-waiting") == "3"
    page.js("document.activeElement.blur()")
    _keys(page, "2")  # the second class: middle
    page.wait(lambda: _shown(page) == order[1], what="the next prediction after labelling")
    assert page.text("#count-waiting") == "2" and page.text("#count-labelled") == "1"
    assert _label(server, order[0]) == classes[1]

    _keys(page, Keys.ARROW_RIGHT)
    page.wait(lambda: _shown(page) == order[2], what="skip")
    _keys(page, Keys.ARROW_LEFT)
    page.wait(lambda: _shown(page) == order[1], what="back")
    _keys(page, "3")
    page.wait(lambda: _shown(page) == order[2], what="the next prediction")
    assert _label(server, order[1]) == classes[2]
    assert _label(server, order[2]) is None  # skipped, not labelled

    _keys(page, "c")  # the attention map of the kept original
    page.wait(
        lambda: "cam-on" in page.find("#review-item").get_attribute("class"),
        timeout=60,
        what="Grad-CAM",
    )
    assert page.find("#review-heat").is_displayed()
    assert page.find("#review-cam").is_selected()
    _keys(page, "c")
    page.wait(lambda: not page.find("#review-heat").is_displayed(), what="Grad-CAM off")
    page.snap("review")

    _keys(page, Keys.ARROW_RIGHT)
    page.wait(lambda: page.find("#review-empty").is_displayed(), what="the end of the queue")
    assert "Nothing is waiting" in page.text("#review-empty")
    after = httpx.get(server.url + "/review/queue").json()
    assert (after["waiting"], after["labelled"]) == (1, 2)
    assert page.console_errors(allowed=("status of 401",)) == []


def test_status_filter_shows_the_labelled(review_page: Page) -> None:
    from selenium.webdriver.support.ui import Select

    page, server = review_page, review_page.server
    (made,) = _predict(server, "right")
    assert (
        httpx.put(
            f"{server.url}/predictions/{made}/label",
            json={"label": "left"},
            headers={"X-API-Key": server.admin_key},
        ).status_code
        == 200
    )
    page.open("/review")
    page.wait(lambda: page.text("#count-labelled") not in ("–", "0"), what="the counts")
    labelled = httpx.get(server.url + "/review/queue", params={"status": "labelled"}).json()
    Select(page.find("#r-status")).select_by_value("labelled")
    page.find("#review-filters button[type=submit]").click()
    page.wait(lambda: _shown(page) == labelled["items"][0]["id"], what="the labelled queue")
    assert page.find("#review-item").get_attribute("data-label") == labelled["items"][0]["label"]
    chosen = page.find(".review-class.chosen")
    assert chosen.get_attribute("data-class") == labelled["items"][0]["label"]
    page.find("#r-version").send_keys("no-such-version")
    page.find("#review-filters button[type=submit]").click()
    page.wait(lambda: page.find("#review-empty").is_displayed(), what="no match")
    assert page.text("#count-waiting") == "0" and page.text("#count-labelled") == "0"
    assert page.console_errors() == []


def test_without_kept_uploads_the_page_shows_thumbnails_and_says_so(page: Page) -> None:
    prediction = httpx.post(
        page.server.url + "/predict",
        files={"file": learnable_png("right", size=48, seed=9)},
        timeout=30,
    )
    assert prediction.status_code == 200
    page.server.flush()
    page.open("/review")
    assert "does not keep uploaded images" in page.text("#review-images")
    page.wait(
        lambda: page.find("#review-stack").get_attribute("data-source") == "thumbnail",
        what="the thumbnail",
    )
    assert not page.find("#review-cam").is_enabled()
    assert "not kept" in page.text("#review-cam-status")
    assert page.console_errors() == []


def test_review_fits_a_phone(review_page: Page) -> None:
    page = review_page
    _predict(page.server, "middle")
    page.driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        page.open("/review")
        page.wait(lambda: page.find("#review-item").is_displayed(), what="a prediction")
        overflow = page.js("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"/review scrolls sideways by {overflow}px at 390px"
        links = page.find_all(".nav a")
        assert all(link.rect["x"] + link.rect["width"] <= 390 for link in links)
    finally:
        page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
