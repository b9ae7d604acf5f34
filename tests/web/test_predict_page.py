"""The Predict page in headless Chromium against a real server, and what every page shares:
theme, phone width, keyboard.

One server and one browser per module (see conftest.py); each test opens the pages it
needs. Screenshots land in $VISIONDECK_SCREENSHOTS (or a temporary folder).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.factories import png_bytes
from tests.serve.conftest import learnable_png
from tests.web.conftest import MAX_UPLOAD, Page
from tests.web.helpers import (
    EXPECTED_STATUS,
    api_predict,
    dispatch_file,
    done_cards,
    downloaded,
    element_png,
    upload,
    write_image,
)

# ---------------------------------------------------------------------------------- Predict


def test_predict_pick_drop_and_paste(page: Page, tmp_path: Path) -> None:
    page.open("/")
    assert page.find("#file-input").get_attribute("multiple") is not None
    left, right = write_image(tmp_path, "left", 1), write_image(tmp_path, "right", 2)
    upload(page, left, right)
    middle = learnable_png("middle", size=96, seed=3)
    dispatch_file(page, middle, "dropped.png", "drop")
    dispatch_file(page, learnable_png("left", size=96, seed=4), "pasted.png", "paste")
    cards = done_cards(page, 4)
    assert len(cards) == 4 and not page.find_all(".card.failed")
    by_name = {c.find_element("css selector", ".file-name").text: c for c in cards}
    assert set(by_name) == {left.name, right.name, "dropped.png", "pasted.png"}
    for name, data in ((left.name, left.read_bytes()), ("dropped.png", middle)):
        card, truth = by_name[name], api_predict(page, data)
        assert card.get_attribute("data-predicted") == truth["predicted"]
        assert card.find_element("css selector", ".predicted").text == truth["predicted"]
        labels = [e.text for e in card.find_elements("css selector", ".bar-label")]
        assert labels == [t["class"] for t in truth["top_k"]]
        values = [float(e.text.rstrip(" %")) for e in
                  card.find_elements("css selector", ".bar-value")]
        assert values == sorted(values, reverse=True) and 0 < sum(values) <= 100.05
        assert values[0] == pytest.approx(truth["top_k"][0]["probability"] * 100, abs=0.051)
        assert card.find_element("css selector", ".upload-progress").get_attribute("value") == "1"
    assert page.text("#batch-status") == "4 of 4 done"
    before = set(page.driver.downloads.iterdir())
    page.find("#export-json").click()
    saved = json.loads(downloaded(page, ".json", before).read_text())
    assert {r["file"] for r in saved["results"]} == set(by_name)
    assert all(r["ok"] and "label_token" not in r["prediction"] for r in saved["results"])
    page.find("#clear-results").click()
    assert not page.find_all(".card") and not page.find("#batch-bar").is_displayed()
    assert page.console_errors() == []


def test_gradcam_overlay_and_opacity(page: Page, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    page.open("/")
    upload(page, write_image(tmp_path, "right", 5), write_image(tmp_path, "left", 6))
    card = done_cards(page, 2)[-1]
    stack = card.find_element("css selector", ".cam-stack")
    plain = element_png(stack)
    card.find_element("css selector", ".cam-toggle").click()
    page.wait(lambda: "cam-on" in card.get_attribute("class"), timeout=60, what="Grad-CAM")
    heat = card.find_element("css selector", "img.heat")
    assert heat.is_displayed()
    assert heat.get_attribute("src").startswith("data:image/png;base64,")
    assert page.js("return arguments[0].naturalWidth", heat) == 224
    assert card.get_attribute("data-cam-class") == card.get_attribute("data-predicted")
    page.wait(lambda: page.js("return arguments[0].complete", heat))
    half = element_png(stack)
    assert np.abs(half - plain).mean() > 3  # the overlay changed the picture
    card.find_element("css selector", ".cam-opacity").send_keys(Keys.END)  # 100 %
    assert heat.value_of_css_property("opacity") == "1"
    full = element_png(stack)
    assert np.abs(full - half).mean() > 3
    card.find_element("css selector", ".cam-opacity").send_keys(*[Keys.LEFT] * 45)
    page.wait(lambda: heat.value_of_css_property("opacity") == "0.55")
    page.snap("predict")
    Select(card.find_element("css selector", ".cam-class")).select_by_value("middle")
    page.wait(lambda: card.get_attribute("data-cam-class") == "middle", timeout=30)
    page.wait(lambda: "“middle”" in card.find_element("css selector", ".cam-status").text)
    card.find_element("css selector", ".cam-toggle").click()  # off: the plain preview again
    page.wait(lambda: not heat.is_displayed())
    assert np.abs(element_png(stack) - plain).mean() < 1
    assert page.console_errors() == []


def test_mark_the_true_label(page: Page, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    page.open("/")
    upload(page, write_image(tmp_path, "middle", 7))
    card = done_cards(page, 1)[0]
    Select(card.find_element("css selector", ".label-form select")).select_by_value("middle")
    card.find_element("css selector", ".label-form button").click()
    page.wait(lambda: card.find_element("css selector", ".label-state").text == "saved: middle")
    page.server.flush()
    record = page.server.services.store.get(card.get_attribute("data-id"))
    assert record is not None and record.label == "middle"


def test_rejected_files_say_why(page: Page, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a picture\n")
    big = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big.write_bytes(png_bytes(noise))
    assert big.stat().st_size > MAX_UPLOAD
    page.open("/")
    upload(page, notes, big)
    cards = {c.find_element("css selector", ".file-name").text: c for c in done_cards(page, 2)}
    text = cards["notes.txt"].find_element("css selector", ".status").text
    assert "failed" in cards["notes.txt"].get_attribute("class")
    assert cards["notes.txt"].get_attribute("data-error") == "not_an_image"
    assert text.startswith("Rejected:") and "JPEG, PNG" in text  # the server's hint
    big_text = cards["big.png"].find_element("css selector", ".status").text
    assert "Too big" in big_text and "256 kB" in big_text
    assert "1 of 2" not in page.text("#batch-status")
    assert page.text("#batch-status") == "2 of 2 done (2 rejected)"
    assert page.console_errors(allowed=EXPECTED_STATUS) == []


# ------------------------------------------------------------ theme, phone width, keyboard


def _background(page: Page) -> tuple[int, ...]:
    value = page.js("return getComputedStyle(document.body).backgroundColor")
    return tuple(int(v) for v in value[value.index("(") + 1:-1].split(",")[:3])


def test_theme_follows_the_system_and_toggles(page: Page) -> None:
    dark_system = {"media": "", "features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", dark_system)
    page.open("/history")
    toggle = page.find("#theme-toggle")
    assert sum(_background(page)) < 150 and toggle.get_attribute("aria-pressed") == "true"
    page.wait(lambda: page.find_all("#history-rows tr"))
    page.snap("history-dark", full=False)
    toggle.click()
    assert sum(_background(page)) > 600 and toggle.get_attribute("aria-pressed") == "false"
    assert page.js("return localStorage.getItem('visiondeck.theme')") == "light"
    page.open("/")  # the choice holds on the next page, before any script of the page runs
    assert sum(_background(page)) > 600
    page.find("#theme-toggle").click()  # back to the system's dark: the choice is forgotten
    assert sum(_background(page)) < 150
    assert page.js("return localStorage.getItem('visiondeck.theme')") is None
    page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "", "features": []})
    page.open("/")
    assert sum(_background(page)) > 600  # light system, no choice: light
    assert page.console_errors() == []


@pytest.mark.parametrize("path", ["/", "/history", "/compare", "/model-card", "/monitor"])
def test_phone_width(page: Page, path: str) -> None:
    page.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        page.open(path)
        time.sleep(0.3)  # let the page's first fetch draw
        overflow = page.js("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 390px"
        links = page.find_all(".nav a")
        assert len(links) == 6 and all(link.is_displayed() for link in links)
        assert all(link.rect["x"] + link.rect["width"] <= 390 for link in links)
        if path == "/":
            assert page.find(".dropzone-label").is_displayed()
            page.snap("phone-predict")
    finally:
        page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_keyboard_reaches_the_upload_control(page: Page) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.open("/")
    page.js("document.activeElement.blur()")
    order = []
    for _ in range(15):
        ActionChains(page.driver).send_keys(Keys.TAB).perform()
        active = page.js("const a = document.activeElement; return a.id || a.textContent.trim()")
        order.append(active)
        if active == "file-input":
            break
    assert order[0] == "Skip to content"
    assert order[-1] == "file-input", order
    label = page.find(".dropzone-label")
    assert label.value_of_css_property("outline-style") == "solid"  # a visible focus ring
    ActionChains(page.driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert label.value_of_css_property("outline-style") == "none"
