"""The web page for a multi-label model, in headless Chromium against a real server.

The Bundle is made by hand, with no training: a seeded `simple_cnn` with three sigmoid
labels (its last layer scaled up so pictures differ) exported to ONNX, with its weights for
Grad-CAM. Its per-label thresholds are placed between the model's own probabilities on two
pictures, so that picture TWO passes exactly two labels and picture NONE passes none; the
fixture checks both answers through the Python Predictor before any page is asked, and the
tests compare what the page shows with what the API answers. One label is named with
markup, which every view must show as text.

A second server serves the same network as a single-label Bundle: its pages must look as
they always did (the History filter by label also works there, as the class filter).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.serve.conftest import learnable_png
from tests.web.conftest import LiveServer, Page, _serve, _settings, fresh_page
from tests.web.helpers import api_predict, done_cards, element_png, upload

LABELS = ["sky", "tree <img src=x id=injected>", "water"]
MARKUP = LABELS[1]
TWO = learnable_png("left", size=48, seed=1)
NONE = learnable_png("right", size=48, seed=2)
MARGIN = 0.02  # the least gap between the two pictures' probabilities a threshold splits


def _network_bundle(folder: Path) -> Path:
    """model.onnx + weights.safetensors of a seeded simple_cnn with three outputs."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    from visiondeck.models import create_model

    model = create_model("simple_cnn", len(LABELS)).eval()
    with torch.no_grad():  # random features are close to each other: spread the logits
        model.fc.weight.mul_(100.0)
        model.fc.bias.zero_()
    folder.mkdir(parents=True)
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(folder / "model.onnx"),
                      dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "weights.safetensors"))
    return folder


def _write_info(folder: Path, task: str, thresholds: dict[str, float] | None) -> None:
    from visiondeck.config import ModelConfig
    from visiondeck.export.bundle import write_bundle_json

    calibration: dict[str, Any] = {"temperature": 1.0, "reject": None,
                                   "decision_threshold": None}
    if thresholds is not None:
        calibration["label_thresholds"] = thresholds
    write_bundle_json(folder, {
        "name": f"tags-{task}", "architecture": "simple_cnn",
        "model": ModelConfig(name="simple_cnn").model_dump(), "task": task,
        "classes": LABELS,
        "input": {"image_size": 16, "channels": 3, "resize": "stretch",
                  "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "calibration": calibration, "metrics": {},
    })


def _probabilities(folder: Path, pictures: list[bytes]) -> np.ndarray:
    from visiondeck.export.predictor import Predictor

    answers = Predictor(folder).predict(pictures)
    return np.array([[s.probability for s in a.scores] for a in answers])


def _add_reference(folder: Path, pictures: list[bytes], passed: np.ndarray,
                   probabilities: np.ndarray) -> None:
    """reference.json of a multi-label model: each label's positive rate on `pictures`."""
    import io
    import json

    from PIL import Image

    from visiondeck.export.bundle import write_bundle_json
    from visiondeck.monitor.reference import brightness_contrast, build_reference, save_reference

    arrays = [np.asarray(Image.open(io.BytesIO(p)).convert("RGB")) for p in pictures]
    features = np.array([brightness_contrast(a) for a in arrays])
    reference = build_reference(
        classes=LABELS, widths=[a.shape[1] for a in arrays], heights=[a.shape[0] for a in arrays],
        brightness=features[:, 0], contrast=features[:, 1], probabilities=probabilities,
        predicted=probabilities.argmax(axis=1), passed=passed, source="test pictures")
    info = json.loads((folder / "bundle.json").read_text())
    info["reference"] = save_reference(folder, reference)
    write_bundle_json(folder, info)


@pytest.fixture(scope="module")
def tag_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The multi-label Bundle, its single-label twin, and what each picture must get."""
    base = tmp_path_factory.mktemp("web-multilabel")
    multi = _network_bundle(base / "multi")
    _write_info(multi, "multilabel", None)
    p_two, p_none = _probabilities(multi, [TWO, NONE])
    order = np.argsort(-(p_two - p_none), kind="stable")
    passing, failing = sorted(order[:2]), int(order[2])
    assert min(p_two[passing] - p_none[passing]) > MARGIN, (p_two, p_none)
    assert max(p_two[failing], p_none[failing]) < 1 - 2 * MARGIN, (p_two, p_none)
    thresholds = {LABELS[i]: round(float(p_two[i] + p_none[i]) / 2, 4) for i in passing}
    thresholds[LABELS[failing]] = round((max(p_two[failing], p_none[failing]) + 1) / 2, 4)
    _write_info(multi, "multilabel", thresholds)
    reference_pictures = [learnable_png(c, size=48, seed=20 + s) for c in ("left", "right")
                          for s in range(4)]
    probabilities = _probabilities(multi, reference_pictures)
    passed = probabilities >= np.array([thresholds[name] for name in LABELS])
    _add_reference(multi, reference_pictures, passed, probabilities)
    expected = {"two": [LABELS[i] for i in passing], "none": []}
    from visiondeck.export.predictor import Predictor

    answers = Predictor(multi).predict([TWO, NONE])
    assert [a.labels for a in answers] == [expected["two"], expected["none"]]
    single = Path(shutil.copytree(multi, base / "single", ignore=shutil.ignore_patterns(
        "bundle.json", "reference.json")))
    _write_info(single, "single", None)
    return {"multi": multi, "single": single, "thresholds": thresholds,
            "expected": expected, "missing": LABELS[failing],
            "reference_rates": dict(zip(LABELS, passed.mean(axis=0), strict=True))}


@pytest.fixture(scope="module")
def live_server(tag_bundles: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[LiveServer]:
    """This module's server (overrides conftest's): the multi-label Bundle, monitoring on."""
    from visiondeck.serve.app import create_app

    base = tmp_path_factory.mktemp("web-multilabel-server")
    app = create_app(_settings(tag_bundles["multi"], base))
    with _serve(app) as url:
        yield LiveServer(url, app, tag_bundles["multi"], "")


@pytest.fixture(scope="module")
def single_server(tag_bundles: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[LiveServer]:
    from visiondeck.serve.app import create_app

    base = tmp_path_factory.mktemp("web-single-server")
    app = create_app(_settings(tag_bundles["single"], base, monitor=False))
    with _serve(app) as url:
        yield LiveServer(url, app, tag_bundles["single"], "")


@pytest.fixture
def single_page(driver: Any, single_server: LiveServer, screenshot_dir: Path) -> Page:
    return fresh_page(driver, single_server, screenshot_dir)


def _pictures(tmp_path: Path) -> tuple[Path, Path]:
    two, none = tmp_path / "two.png", tmp_path / "none.png"
    two.write_bytes(TWO)
    none.write_bytes(NONE)
    return two, none


def _by_name(cards: list) -> dict[str, Any]:
    return {c.find_element("css selector", ".file-name").text: c for c in cards}


def _texts(element: Any, css: str) -> list[str]:
    return [e.text for e in element.find_elements("css selector", css)]


def _percent(p: float) -> str:
    return f"{p * 100:.1f} %"


# ---------------------------------------------------------------------------------- Predict


def test_predict_shows_every_passing_label_as_a_chip(page: Page, tmp_path: Path,
                                                     tag_bundles: dict[str, Any]) -> None:
    page.open("/")
    two, none = _pictures(tmp_path)
    upload(page, two, none)  # two files at once: each gets its own answer
    cards = _by_name(done_cards(page, 2))
    assert not page.find_all(".card.failed")
    truth = api_predict(page, TWO)
    assert truth["predicted_labels"] == tag_bundles["expected"]["two"]
    card = cards["two.png"]
    chips = card.find_elements("css selector", ".label-chips .chip")
    assert _texts(card, ".label-chips .chip-name") == truth["predicted_labels"]
    by_class = {entry["class"]: entry for entry in truth["labels"]}
    for chip, name in zip(chips, truth["predicted_labels"], strict=True):
        entry = by_class[name]
        assert chip.find_element("css selector", ".chip-value").text == _percent(
            entry["probability"])
        assert chip.get_attribute("title") == (
            f"{name}: probability {_percent(entry['probability'])}, "
            f"threshold {_percent(entry['threshold'])}")
        assert entry["threshold"] == pytest.approx(tag_bundles["thresholds"][name])
    bars = card.find_elements("css selector", ".label-bars li")
    assert [b.get_attribute("data-label") for b in bars] == LABELS  # every label, class order
    for bar, entry in zip(bars, truth["labels"], strict=True):
        assert bar.get_attribute("data-passed") == str(entry["passed"]).lower()
        assert bar.find_element("css selector", ".bar-value").text == _percent(entry["probability"])
        assert bar.find_element("css selector", ".bar-threshold").text == (
            f"{'≥' if entry['passed'] else '<'} {_percent(entry['threshold'])}")
    assert card.get_attribute("data-predicted") == "|".join(truth["predicted_labels"])

    empty = cards["none.png"]
    assert empty.find_element("css selector", ".no-labels").text == (
        "No label passes its threshold.")
    assert not empty.find_elements("css selector", ".chip")
    assert [b.get_attribute("data-passed") for b in
            empty.find_elements("css selector", ".label-bars li")] == ["false"] * 3
    assert not page.find_all("#injected")  # the label's markup is text
    assert MARKUP in card.text
    assert page.console_errors() == []


def test_overlay_for_a_chosen_label(page: Page, tmp_path: Path,
                                    tag_bundles: dict[str, Any]) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    first, second = tag_bundles["expected"]["two"]
    # the server explains the asked label's own logit, with sigmoid probabilities (the first
    # call loads torch and the network: a long wait on a busy machine)
    truth = {e["class"]: e["probability"] for e in api_predict(page, TWO)["labels"]}
    maps = {}
    for name in LABELS:
        answer = httpx.post(page.server.url + "/explain", params={"class": name},
                            files={"file": TWO}, timeout=240)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["class"], body["class_index"]) == (name, LABELS.index(name))
        assert {t["class"]: t["probability"] for t in body["top_k"]} == pytest.approx(
            truth, abs=1e-3)
        maps[name] = body["heatmap_png_base64"]
    assert len(set(maps.values())) == len(LABELS)
    default = httpx.post(page.server.url + "/explain", files={"file": TWO}, timeout=60).json()
    assert default["class"] == max(truth, key=truth.get)  # no label asked: the most probable

    page.open("/")
    upload(page, *_pictures(tmp_path))
    card = _by_name(done_cards(page, 2))["two.png"]
    stack = card.find_element("css selector", ".cam-stack")
    plain = element_png(stack)
    chip = card.find_element("css selector", f'.label-chips .chip[data-label="{second}"]')
    assert chip.tag_name == "button" and chip.get_attribute("aria-pressed") == "false"
    chip.send_keys(Keys.ENTER)  # the keyboard opens a label's overlay
    page.wait(lambda: card.get_attribute("data-cam-class") == second, timeout=60,
              what=f"the overlay of {second!r}")
    heat = card.find_element("css selector", "img.heat")
    assert heat.is_displayed() and chip.get_attribute("aria-pressed") == "true"
    assert f"“{second}”" in card.find_element("css selector", ".cam-status").text
    assert Select(card.find_element("css selector", ".cam-class")).first_selected_option.text \
        == second
    page.wait(lambda: page.js("return arguments[0].complete", heat))
    assert heat.get_attribute("src").endswith(maps[second])  # the map of the chosen label
    assert np.abs(element_png(stack) - plain).mean() > 3  # the overlay is drawn

    Select(card.find_element("css selector", ".cam-class")).select_by_value(first)
    page.wait(lambda: card.get_attribute("data-cam-class") == first, timeout=60)
    first_chip = card.find_element("css selector", f'.label-chips .chip[data-label="{first}"]')
    assert first_chip.get_attribute("aria-pressed") == "true"
    assert chip.get_attribute("aria-pressed") == "false"
    assert heat.get_attribute("src").endswith(maps[first])  # each label has its own map
    page.wait(lambda: page.js("return arguments[0].complete", heat))
    page.snap("predict-multilabel")  # docs/screenshots/: the first label's overlay on
    first_chip.click()  # the shown label's chip again: overlay off
    page.wait(lambda: not heat.is_displayed())
    assert first_chip.get_attribute("aria-pressed") == "false"
    assert page.console_errors() == []


# ------------------------------------------------------------------- labels and History


def test_label_form_sends_a_set_and_history_shows_it(page: Page, tmp_path: Path,
                                                     tag_bundles: dict[str, Any]) -> None:
    predicted = tag_bundles["expected"]["two"]
    chosen = [predicted[1], tag_bundles["missing"]]  # a different set
    chosen.sort(key=LABELS.index)
    page.open("/")
    upload(page, _pictures(tmp_path)[0])
    card = done_cards(page, 1)[0]
    form = card.find_element("css selector", ".label-set-form")
    boxes = form.find_elements("css selector", "input[type=checkbox]")
    assert [b.get_attribute("value") for b in boxes] == LABELS
    assert [b.get_attribute("value") for b in boxes if b.is_selected()] == predicted
    assert _texts(form, ".label-choices label") == LABELS
    state = form.find_element("css selector", ".label-state")

    for box in boxes:  # none of the labels is a set too
        if box.is_selected():
            box.click()
    form.find_element("css selector", "button[type=submit]").click()
    page.wait(lambda: state.text == "saved: none of the labels")
    page.server.flush()
    record = page.server.services.store.get(card.get_attribute("data-id"))
    assert record is not None and record.true_labels == []

    for box in boxes:
        if (box.get_attribute("value") in chosen) != box.is_selected():
            box.send_keys(" ")  # the keyboard ticks
    form.find_element("css selector", "button[type=submit]").click()
    page.wait(lambda: state.text == f"saved: {', '.join(chosen)}")
    page.server.flush()
    record = page.server.services.store.get(card.get_attribute("data-id"))
    assert record.true_labels == chosen

    # a label the server does not know (say, after a model reload) is refused: its message
    page.js("arguments[0].value = 'fog'; arguments[0].checked = true;", boxes[0])
    form.find_element("css selector", "button[type=submit]").click()
    page.wait(lambda: "not labels of this model" in state.text)
    assert "'fog'" in state.text and "error" in state.get_attribute("class")
    assert page.server.services.store.get(card.get_attribute("data-id")).true_labels == chosen

    row_css = f'tr[data-id="{card.get_attribute("data-id")}"]'
    page.open("/history")
    page.wait(lambda: page.find_all(row_css), what="the labelled row")
    row = page.find(row_css)
    assert _texts(row, ".predicted-cell .chip") == predicted
    assert _texts(row, ".label-cell .chip") == chosen
    assert not page.find_all("#injected")
    assert page.console_errors(allowed=("status of 422",)) == []


def test_history_filters_by_label(page: Page, tag_bundles: dict[str, Any]) -> None:
    from selenium.webdriver.support.ui import Select

    for _ in range(2):
        api_predict(page, TWO)
        api_predict(page, NONE)
    page.server.flush()
    page.open("/history")
    assert not page.find_all("#f-class")  # a set has no one class: the filter is by label
    status = page.find("#history-status")
    page.wait(lambda: status.text.endswith("predictions"))
    for name in LABELS:
        expected = httpx.get(page.server.url + "/predictions",
                             params={"label": name, "limit": 1}, timeout=30).json()["total"]
        if name == tag_bundles["missing"]:
            assert expected == 0
        Select(page.find("#f-label")).select_by_value(name)
        page.find("#filters button[type=submit]").click()
        if expected:
            page.wait(lambda e=expected: status.text == f"{e} predictions", what=name)
            rows = page.find_all("#history-rows tr")
            assert rows and all(name in _texts(r, ".predicted-cell .chip") for r in rows)
        else:
            page.wait(lambda: "No prediction matches" in page.text("#history-rows"), what=name)
    assert httpx.get(page.server.url + "/predictions", params={
        "label": tag_bundles["expected"]["two"][0], "limit": 1}).json()["total"] >= 2
    from urllib.parse import parse_qs, urlsplit

    assert parse_qs(urlsplit(page.driver.current_url).query)["label"] == [LABELS[-1]]
    page.open(f"/history?label={tag_bundles['expected']['two'][0]}")  # a link keeps it
    assert Select(page.find("#f-label")).first_selected_option.get_attribute("value") == (
        tag_bundles["expected"]["two"][0])
    page.wait(lambda: page.find_all("#history-rows tr[data-id]"))
    none_rows = [r for r in page.find_all("#history-rows tr[data-id]")
                 if r.find_elements("css selector", ".predicted-cell .no-labels")]
    assert not none_rows  # NONE's rows predict no label, so this filter leaves them out
    assert not page.find_all("#injected")
    assert page.console_errors() == []


def test_compare_shows_stored_label_sets(page: Page, tag_bundles: dict[str, Any]) -> None:
    ids = [api_predict(page, picture)["id"] for picture in (TWO, NONE)]
    page.server.flush()
    page.open(f"/compare?ids={','.join(ids)}")
    page.wait(lambda: len(page.find_all(".card.done")) == 2, what="stored predictions")
    two, none = page.find_all(".card")
    assert _texts(two, ".chip-name") == tag_bundles["expected"]["two"]
    assert not two.find_elements("css selector", "button.chip")  # no overlay for a stored row
    assert none.find_element("css selector", ".no-labels").text == (
        "No label passes its threshold.")
    assert not page.find_all("#injected")
    assert page.console_errors() == []


# ---------------------------------------------------------------------------- Monitor, card


def test_monitor_shows_each_label_rate(page: Page, tag_bundles: dict[str, Any]) -> None:
    for picture in (TWO, NONE, TWO):
        api_predict(page, picture)
    page.server.flush()
    page.open("/monitor")
    page.wait(lambda: page.find("#monitor-status").get_attribute("data-state") == "on",
              what="the monitoring summary")
    summary = httpx.get(page.server.url + "/monitor/summary", timeout=30).json()
    assert summary["task"] == "multilabel" and summary["window"]["size"] >= 3
    assert page.find("#monitor-labels").is_displayed()
    assert not page.find("#monitor-single").is_displayed()
    rows = page.find_all("#label-rate-rows tr")
    assert [r.find_element("css selector", "th").text for r in rows] == LABELS
    for row, entry in zip(rows, summary["labels"], strict=True):
        cells = _texts(row, "td")
        assert cells[0] == str(entry["positives"])
        assert cells[1] == _percent(entry["live_rate"])
        assert cells[2] == _percent(entry["reference_rate"])
        assert entry["reference_rate"] == pytest.approx(
            tag_bundles["reference_rates"][entry["label"]], abs=1e-6)
    missing = rows[LABELS.index(tag_bundles["missing"])]
    assert _texts(missing, "td")[:2] == ["0", "0.0 %"]
    assert f"{summary['window']['size']} / {summary['window']['capacity']}" in page.text(
        "#monitor-tiles")
    assert not page.find_all("#injected")
    page.snap("monitor-multilabel")
    assert page.console_errors() == []


def test_model_card_shows_the_task_and_thresholds(page: Page,
                                                  tag_bundles: dict[str, Any]) -> None:
    page.open("/model-card")
    assert page.find("#card-task").get_attribute("data-task") == "multilabel"
    assert page.text("#card-task").startswith("multi-label")
    rows = page.find_all("#card-thresholds tbody tr")
    assert [_texts(r, "td") for r in rows] == [
        [name, f"{tag_bundles['thresholds'][name]:.3f}"] for name in LABELS]
    assert not page.find_all("#injected")
    assert page.console_errors() == []


def test_model_card_shows_per_label_temperatures(tag_bundles: dict[str, Any],
                                                 tmp_path: Path) -> None:
    import json

    from fastapi.testclient import TestClient

    from visiondeck.export.bundle import write_bundle_json
    from visiondeck.serve.app import create_app

    bundle = Path(shutil.copytree(tag_bundles["multi"], tmp_path / "bundle"))
    info = json.loads((bundle / "bundle.json").read_text())
    info["calibration"]["label_temperatures"] = {LABELS[0]: 1.25, LABELS[2]: 0.8}
    write_bundle_json(bundle, info)
    with TestClient(create_app(_settings(bundle, tmp_path, monitor=False))) as client:
        html = client.get("/model-card").text
    assert '<th scope="col">Temperature</th>' in html
    assert "<td>tree &lt;img src=x id=injected&gt;</td>" in html
    cells = html[html.index('id="card-thresholds"'):].split("</table>")[0]
    assert [c.split("<")[0] for c in cells.split('<td class="num">')[1:]] == [
        f"{tag_bundles['thresholds'][LABELS[0]]:.3f}", "1.250",
        f"{tag_bundles['thresholds'][LABELS[1]]:.3f}", "—",
        f"{tag_bundles['thresholds'][LABELS[2]]:.3f}", "0.800"]


def test_phone_width(page: Page, tmp_path: Path) -> None:
    page.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        page.open("/")
        upload(page, *_pictures(tmp_path))
        done_cards(page, 2)
        for path in ("/", "/history", "/monitor", "/model-card"):
            if path != "/":
                page.open(path)
                time.sleep(0.3)  # let the page's first fetch draw
            overflow = page.js("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 390px"
    finally:
        page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert page.console_errors() == []


# ------------------------------------------------------------ a single-label model: as before


def test_single_label_pages_are_unchanged(single_page: Page, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    page = single_page
    page.open("/")
    upload(page, _pictures(tmp_path)[0])
    card = done_cards(page, 1)[0]
    truth = api_predict(page, TWO)
    assert truth["task"] == "single" and truth["predicted_labels"] is None
    assert card.find_element("css selector", ".predicted").text == truth["predicted"]
    assert _texts(card, ".bar-label") == [t["class"] for t in truth["top_k"]]
    assert not card.find_elements("css selector", ".chip, .label-bars, .label-set-form")
    assert card.find_elements("css selector", ".label-form select")
    assert Select(card.find_element("css selector", ".cam-class")).options[0].text == (
        "predicted class")

    page.server.flush()
    page.open(f"/history?label={truth['predicted']}")  # ?label= is the predicted class here
    assert not page.find_all("#f-label")
    assert Select(page.find("#f-class")).first_selected_option.get_attribute("value") == (
        truth["predicted"])
    expected = httpx.get(page.server.url + "/predictions",
                         params={"label": truth["predicted"], "limit": 1}).json()["total"]
    page.wait(lambda: page.text("#history-status") == f"{expected} prediction"
              + ("s" if expected != 1 else ""))
    rows = page.find_all("#history-rows tr")
    assert {r.get_attribute("data-predicted") for r in rows} == {truth["predicted"]}

    page.open("/model-card")
    assert page.find("#card-task").get_attribute("data-task") == "single"
    assert not page.find_all("#card-thresholds")
    assert page.console_errors() == []
