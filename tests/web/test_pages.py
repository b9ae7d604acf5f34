"""History, Compare, Model card and Monitor in headless Chromium against real servers.

One server and one browser per module (see conftest.py); each test opens the pages it
needs. Screenshots land in $VISIONDECK_SCREENSHOTS (or a temporary folder).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import time
from pathlib import Path

import httpx

from tests.serve.conftest import learnable_png
from tests.web.conftest import Page
from tests.web.helpers import (
    EXPECTED_STATUS,
    api_predict,
    done_cards,
    downloaded,
    upload,
    write_image,
)
from visiondeck.serve.history.store import PredictionQuery

# ---------------------------------------------------------------------------------- History


def test_history_find_filter_page_and_export(page: Page, tmp_path: Path) -> None:
    page.open("/")
    upload(page, write_image(tmp_path, "right", 11))
    mine = done_cards(page, 1)[0]
    mine_id, mine_class = mine.get_attribute("data-id"), mine.get_attribute("data-predicted")
    for seed in range(12):  # enough rows for two pages of ten
        api_predict(page, learnable_png(("left", "middle", "right")[seed % 3], seed=100 + seed))
    page.server.flush()
    total = page.server.services.store.query(PredictionQuery())[1]

    page.open("/history")
    page.wait(lambda: page.find_all(f'tr[data-id="{mine_id}"]'), what="my prediction's row")
    row = page.find(f'tr[data-id="{mine_id}"]')
    thumb = row.find_element("css selector", "img.thumb")
    assert page.js("return arguments[0].naturalWidth", thumb) > 0
    assert mine_class in row.text and "%" in row.text
    assert page.text("#history-status") == f"{total} predictions"

    from selenium.webdriver.support.ui import Select

    Select(page.find("#f-class")).select_by_value(mine_class)
    Select(page.find("#f-size")).select_by_value("10")
    page.find("#filters button[type=submit]").click()
    expected = page.server.services.store.query(PredictionQuery(predicted=mine_class))[1]
    page.wait(lambda: page.text("#history-status") == f"{expected} predictions")
    rows = page.find_all("#history-rows tr")
    assert len(rows) == min(10, expected)
    assert {r.get_attribute("data-predicted") for r in rows} == {mine_class}
    assert f"class={mine_class}" in page.driver.current_url  # a filtered view is a link

    Select(page.find("#f-class")).select_by_value("")
    page.find("#filters button[type=submit]").click()
    page.wait(lambda: page.text("#page-info") == f"1–10 of {total}")
    first_page = [r.get_attribute("data-id") for r in page.find_all("#history-rows tr")]
    page.find("#page-next").click()
    page.wait(lambda: page.text("#page-info").startswith("11–"))
    second_page = [r.get_attribute("data-id") for r in page.find_all("#history-rows tr")]
    assert not set(first_page) & set(second_page)
    page.snap("history")

    page.find("#f-min").send_keys("0")
    page.find("#filters button[type=submit]").click()
    page.wait(lambda: page.text("#page-info") == f"1–10 of {total}")
    before = set(page.driver.downloads.iterdir())
    page.find("#export-csv").click()
    exported = list(csv.DictReader(io.StringIO(downloaded(page, ".csv", before).read_text())))
    assert len(exported) == total and mine_id in {r["id"] for r in exported}
    mine_row = next(r for r in exported if r["id"] == mine_id)
    assert mine_row["predicted"] == mine_class and json.loads(mine_row["top_k"])
    assert page.text("#history-status") == f"Exported {total} predictions."

    before = set(page.driver.downloads.iterdir())
    page.find("#export-json").click()
    document = json.loads(downloaded(page, ".json", before).read_text())
    assert document["total"] == total and mine_id in {i["id"] for i in document["items"]}
    assert document["filters"]["min"] == "0"

    page.js("window.print = () => { window.__printed = true; };")
    page.find("#export-pdf").click()
    assert page.js("return window.__printed") is True
    page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    assert not page.find(".topbar").is_displayed() and not page.find("#filters").is_displayed()
    assert page.find("#print-summary").is_displayed()
    assert "min 0" in page.text("#print-summary")
    page.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    pdf = base64.b64decode(page.driver.print_page())
    assert pdf.startswith(b"%PDF") and b"/Type /Page" in pdf

    # two rows chosen here open side by side in Compare
    boxes = page.find_all("#history-rows input[type=checkbox]")[:2]
    chosen = [b.find_element("xpath", "./ancestor::tr").get_attribute("data-id") for b in boxes]
    for box in boxes:
        box.click()
    assert page.text("#compare-selected") == "Compare selected (2)"
    page.find("#compare-selected").click()
    page.wait(lambda: len(page.find_all(".card.done")) == 2, what="stored predictions")
    assert [c.get_attribute("data-id") for c in page.find_all(".card")] == chosen
    assert page.console_errors() == []


# ---------------------------------------------------------------------------------- Compare


def test_compare_side_by_side_and_across_versions(page: Page, tmp_path: Path) -> None:
    page.open("/compare")
    a, b = write_image(tmp_path, "left", 21), write_image(tmp_path, "right", 22)
    upload(page, a, b)
    cards = done_cards(page, 2)
    assert [c.find_element("css selector", ".file-name").text for c in cards] == [a.name, b.name]
    assert cards[0].location["y"] == cards[1].location["y"]  # side by side
    assert cards[0].location["x"] < cards[1].location["x"]
    page.find("#compare-cam").click()
    page.wait(lambda: all("cam-on" in c.get_attribute("class") for c in cards), timeout=60,
              what="both attention maps")
    page.js("const r = document.getElementById('compare-opacity'); r.value = 80;"
            "r.dispatchEvent(new Event('input'));")
    heats = page.find_all(".card img.heat")
    assert [h.value_of_css_property("opacity") for h in heats] == ["0.8", "0.8"]
    page.wait(lambda: len(page.find_all(".versions p")) == 2)
    assert all("No other version" in v.text for v in page.find_all(".versions"))
    page.snap("compare")

    # a new model version (other calibration), swapped in by the admin reload
    old_version = page.server.services.engine.model.version
    info = json.loads((page.server.bundle / "bundle.json").read_text())
    info["calibration"]["temperature"] = 3.0
    (page.server.bundle / "bundle.json").write_text(json.dumps(info))
    reloaded = httpx.post(page.server.url + "/admin/reload", timeout=60,
                          headers={"X-API-Key": page.server.admin_key}).json()
    assert reloaded["swapped"] is True
    page.server.flush()
    page.open("/compare")
    upload(page, a)
    card = done_cards(page, 1)[0]
    page.wait(lambda: card.find_elements("css selector", ".version"), what="the older version")
    older = card.find_element("css selector", ".version")
    assert older.get_attribute("data-version") == old_version
    assert old_version in older.text and older.find_elements("css selector", ".bar")
    assert page.text(".model-badge code") == reloaded["model"]["version"] != old_version
    page.snap("compare-versions")
    assert page.console_errors() == []


# ---------------------------------------------------------------------------- Model, Monitor


def test_model_card(page: Page) -> None:
    page.open("/model-card")
    model = page.server.services.engine.model
    info = model.bundle.info
    assert page.text("#card-version") == model.version
    classes = page.find_all("#card-classes tbody tr")
    assert [r.find_elements("css selector", "td")[1].text for r in classes] == [
        "left", "middle", "right"]
    train = info["data"]["train_counts"]
    assert [int(r.find_elements("css selector", "td")[2].text) for r in classes] == [
        train[c] for c in ("left", "middle", "right")]
    metrics = page.text("#card-metrics")
    assert "accuracy" in metrics and f"{info['metrics']['accuracy']:.4f}" in metrics
    counts = info["evaluation"]["confusion_matrix"]["counts"]
    cells = page.find_all("#card-confusion .cm-count")
    assert [int(c.text) for c in cells] == [v for row in counts for v in row]
    bench = page.find_all("#card-bench tbody tr")
    assert [r.find_element("css selector", "td").text for r in bench] == [
        "pytorch", "onnxruntime-fp32"]
    assert "fp32" in page.text("#card-variants")
    page.snap("model-card")
    assert page.console_errors() == []


def test_monitor_page_draws_the_live_summary(page: Page, tmp_path: Path) -> None:
    for seed in range(6):  # enough predictions for the drift window to say something
        api_predict(page, learnable_png(("left", "middle", "right")[seed % 3], seed=300 + seed))
    page.open("/monitor")
    page.wait(lambda: page.find("#monitor-status").get_attribute("data-state") == "on",
              what="the monitoring summary")
    summary = httpx.get(page.server.url + "/monitor/summary", timeout=30).json()
    assert summary["window"]["size"] >= 6
    assert len(page.find_all("#chart-volume rect.volume-bar")) == len(summary["volume"])
    classes = set(summary["class_mix"]["reference"]) | set(summary["class_mix"]["live"])
    assert len(page.find_all("#chart-mix rect.mix-live")) == 1 + len(classes)
    assert len(page.find_all("#chart-confidence circle.confidence-dot")) == len(
        summary["confidence"]["series"])
    rows = page.find_all("#drift-rows tr")
    assert [r.find_element("css selector", "td").text for r in rows] == [
        d["feature"] for d in summary["drift"]]
    assert f"{summary['window']['size']} / {summary['window']['capacity']}" in page.text(
        "#monitor-tiles")
    page.snap("monitor")
    assert page.console_errors() == []


def _summary() -> dict:
    start = 1_700_000_000
    minutes = [time.strftime("%Y-%m-%dT%H:%M:00+00:00", time.gmtime(start + 60 * i))
               for i in range(12)]
    return {
        "model": {"name": "shared", "version": "abc123def456"},
        "window": {"size": 240, "capacity": 1000, "since": minutes[0]},
        "volume": [{"t": t, "count": 5 + 3 * (i % 4)} for i, t in enumerate(minutes)],
        "class_mix": {"reference": {"left": 0.34, "middle": 0.33, "right": 0.33},
                      "live": {"left": 0.6, "middle": 0.1, "right": 0.3}},
        "confidence": {"reference_mean": 0.82, "live_mean": 0.64,
                       "series": [{"t": t, "mean": 0.8 - 0.02 * i}
                                  for i, t in enumerate(minutes)]},
        "drift": [
            {"feature": "class_mix", "method": "chi2", "score": 31.2, "threshold": 9.2,
             "alarm": True},
            {"feature": "confidence", "method": "ks", "score": 0.11, "threshold": 0.2,
             "alarm": False},
            {"feature": "<img src=x id=injected>", "method": "psi", "score": None,
             "threshold": 0.2, "alarm": False},
        ],
        "alarm": True,
        "live_accuracy": {"labelled": 40, "accuracy": 0.775},
    }


def test_monitor_page_off_and_exact_drawing(driver, contract_server, screenshot_dir) -> None:
    page = Page(driver, contract_server, screenshot_dir)
    page.open("/monitor")  # monitoring off: the real endpoint's 404
    page.wait(lambda: page.find("#monitor-status").get_attribute("data-state") == "off")
    assert page.text("#monitor-status") == "Monitoring is not enabled for this server."
    assert not page.find("#monitor").is_displayed()
    assert page.console_errors(allowed=EXPECTED_STATUS) == []

    contract_server.monitor["summary"] = _summary()
    page.open("/monitor")
    page.wait(lambda: page.find("#monitor-status").get_attribute("data-state") == "on")
    assert len(page.find_all("#chart-volume rect.volume-bar")) == 12
    assert len(page.find_all("#chart-mix rect.mix-live")) == 1 + 3  # legend + classes
    assert len(page.find_all("#chart-confidence circle.confidence-dot")) == 12
    assert page.find_all("#chart-confidence line.reference-line")
    rows = page.find_all("#drift-rows tr")
    assert [r.get_attribute("class") for r in rows] == ["alarm", "", ""]
    assert rows[2].find_element("css selector", "td").text == "<img src=x id=injected>"
    assert not page.find_all("#injected")  # text, never markup
    assert rows[2].find_elements("css selector", "td")[2].text == "—"  # no score yet
    tiles = page.text("#monitor-tiles")
    assert "Alarm" in tiles and "77.5 %" in tiles and "240 / 1000" in tiles
    assert page.console_errors() == []


def test_api_key_is_asked_for_and_used(driver, keyed_server, screenshot_dir,
                                       tmp_path: Path) -> None:
    page = Page(driver, keyed_server, screenshot_dir)
    page.open("/")
    page.js("localStorage.clear()")
    page.open("/")
    assert page.text("#api-key-state") == "this server needs an API key"
    upload(page, write_image(tmp_path, "left", 41))
    refused = done_cards(page, 1)[0]
    assert refused.get_attribute("data-error") == "unauthorized"
    page.find("#api-key").send_keys("vd_wrong")
    page.find("#api-key-form button").click()
    page.wait(lambda: page.text("#api-key-state") not in ("", "checking…"))
    assert page.text("#api-key-state") != "key accepted"
    page.find("#api-key").clear()
    page.find("#api-key").send_keys(keyed_server.admin_key)
    page.find("#api-key-form button").click()
    page.wait(lambda: page.text("#api-key-state") == "key accepted")
    page.open("/")  # the key is kept for the next pages
    upload(page, write_image(tmp_path, "left", 42))
    card = done_cards(page, 1)[0]
    assert "done" in card.get_attribute("class"), card.text
    mine = card.get_attribute("data-id")
    keyed_server.flush()
    page.open("/history")
    page.wait(lambda: page.find_all(f'tr[data-id="{mine}"]'), what="the row in the history")
    assert page.console_errors(allowed=("status of 401",)) == []


