"""Multi-label models through the API server: answers, history, labels, monitoring.

The Bundle is the deployment tests' colour model (tests/deploy/conftest.py: a real ONNX
graph whose logits are 8 × each channel's mean) marked `"task": "multilabel"` with a
threshold of 0.9 per label, so every answer is known in advance: a red picture is {red}, a
yellow one {red, green}, a dark one no label at all. The history runs on the machine's
real PostgreSQL (and SQLite for the migration check).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.conftest import CLASSES, write_colour_bundle
from tests.factories import png_bytes
from tests.serve.test_history_journal import Outage, _until, _writer, outage  # noqa: F401
from tests.serve.test_store import (
    PG_URL,
    make_record,
    older_table,
    require_postgres,
    unique_prefix,
)
from visiondeck.export.bundle import write_bundle_json
from visiondeck.export.predictor import Predictor

THRESHOLD = 0.9
PICTURES = {"red": (230, 20, 20), "yellow": (230, 230, 20), "dark": (20, 20, 20),
            "blue": (20, 20, 230)}
EXPECTED = {"red": ["red"], "yellow": ["red", "green"], "dark": [], "blue": ["blue"]}
SINGLE_KEYS = ["id", "predicted", "confidence", "unknown", "top_k", "model", "latency_ms",
               "image", "label_token", "success", "prediction", "top3_predictions"]


def picture(name: str, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-10, 11, (16, 16, 3), dtype=np.int16)
    base = np.array(PICTURES[name], dtype=np.int16)
    return png_bytes(np.clip(base + noise, 0, 255).astype(np.uint8))


def make_multilabel(folder: Path) -> Path:
    write_colour_bundle(folder, name="colour-tags")
    info = json.loads((folder / "bundle.json").read_text())
    info["task"] = "multilabel"
    info["calibration"]["label_thresholds"] = {name: THRESHOLD for name in CLASSES}
    write_bundle_json(folder, info)
    return folder


@pytest.fixture(scope="session")
def ml_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_multilabel(tmp_path_factory.mktemp("ml-serve") / "bundle")


@pytest.fixture(scope="session")
def single_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_bundle(tmp_path_factory.mktemp("single-serve") / "bundle")


@pytest.fixture
def make_settings(ml_bundle: Path, tmp_path: Path, serve_lane: bool):
    """As tests/serve/conftest.py's, serving the multi-label Bundle (no trained run needed)."""
    from visiondeck.serve.settings import ServeSettings

    def make(**changes):
        values = {"bundle": str(ml_bundle), "data_dir": tmp_path / "data",
                  "watch_interval_s": 0, "preprocess_threads": 2, "intra_op_threads": 1,
                  "fast_lane": serve_lane, **changes}
        return ServeSettings(**values)

    return make


@pytest.fixture
def pg(make_settings, ml_bundle: Path):
    """Settings factory: the multi-label Bundle, history in PostgreSQL (a fresh prefix)."""
    require_postgres()
    prefix = unique_prefix()

    def settings(**changes):
        return make_settings(**{"bundle": str(ml_bundle), "database_url": PG_URL,
                                "table_prefix": prefix, **changes})

    yield settings
    from visiondeck.serve.history.store import PredictionStore

    store = PredictionStore(PG_URL, prefix=prefix)
    store.drop()
    store.dispose()


def predict(client, name: str, **params) -> dict:
    response = client.post("/predict", params=params,
                           files={"file": (f"{name}.png", picture(name), "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def flush(client) -> None:
    assert client.app.state.services.writer.flush(10)


@pytest.mark.parametrize("serve_lane", [True, False])
def test_predict_answers_every_label_with_its_verdict(make_client, ml_bundle: Path,
                                                      serve_lane: bool, tmp_path: Path) -> None:
    from visiondeck.serve.api.schemas import PredictionResponse

    client = make_client(bundle=str(ml_bundle), store=False)
    predictor = Predictor(ml_bundle)
    for name, expected in EXPECTED.items():
        body = predict(client, name, top_k=2)
        PredictionResponse.model_validate(body)
        assert body["task"] == "multilabel"
        assert body["predicted_labels"] == expected
        assert body["predicted"] == body["prediction"] == "|".join(expected)
        assert [e["class"] for e in body["labels"]] == CLASSES  # class order
        assert all(e["threshold"] == THRESHOLD for e in body["labels"])
        assert [e["class"] for e in body["labels"] if e["passed"]] == expected
        assert all(e["passed"] == (e["probability"] >= THRESHOLD) for e in body["labels"])
        assert body["confidence"] == max(e["probability"] for e in body["labels"])
        ranked = sorted(body["labels"], key=lambda e: -e["probability"])
        assert [t["class"] for t in body["top_k"]] == [e["class"] for e in ranked[:2]]
        assert [t["class"] for t in body["top3_predictions"]] == [e["class"] for e in ranked]
        # the torch-free Predictor (export/) answers the same probabilities and verdicts
        path = tmp_path / f"{name}.png"
        path.write_bytes(picture(name))
        [reference] = predictor.predict([str(path)])
        assert reference.labels == expected
        assert [e["probability"] for e in body["labels"]] == pytest.approx(
            [s.probability for s in reference.scores], abs=1e-6)


def test_model_says_its_task_and_thresholds(make_client, ml_bundle: Path) -> None:
    body = make_client(bundle=str(ml_bundle), store=False).get("/model").json()
    assert body["task"] == "multilabel"
    assert body["calibration"]["label_thresholds"] == {c: THRESHOLD for c in CLASSES}


def test_batch_answers_each_file_as_predict(make_client, ml_bundle: Path) -> None:
    from visiondeck.serve.api.schemas import BatchResponse

    client = make_client(bundle=str(ml_bundle), store=False)
    names = list(EXPECTED)
    response = client.post("/predict/batch", files=[
        ("files", (f"{n}.png", picture(n), "image/png")) for n in names])
    assert response.status_code == 200, response.text
    body = response.json()
    BatchResponse.model_validate(body)
    for name, item in zip(names, body["results"], strict=True):
        assert item["ok"] and item["prediction"]["task"] == "multilabel"
        assert item["prediction"]["predicted_labels"] == EXPECTED[name]


def test_single_label_answers_keep_their_shape(make_client, single_bundle: Path) -> None:
    client = make_client(bundle=str(single_bundle))
    body = predict(client, "red")
    # additive fields only, at the end
    assert list(body) == [*SINGLE_KEYS, "task", "labels", "predicted_labels"]
    assert body["task"] == "single" and body["predicted"] == "red"
    assert body["labels"] is None and body["predicted_labels"] is None
    batch = client.post("/predict/batch", files=[("files", ("a.png", picture("blue"),
                                                            "image/png"))]).json()
    assert list(batch["results"][0]["prediction"]) == list(body)
    # the label endpoint keeps `label` and refuses a set
    token = body["label_token"]
    assert client.put(f"/predictions/{body['id']}/label",
                      json={"labels": ["red"], "token": token}).status_code == 422
    answer = client.put(f"/predictions/{body['id']}/label", json={"label": "red",
                                                                  "token": token})
    assert answer.status_code == 200 and answer.json() == {"id": body["id"], "label": "red"}


def test_history_stores_filters_and_survives_a_restart(make_client, pg) -> None:
    client = make_client(pg())
    answers = {name: predict(client, name) for name in EXPECTED}
    # a true set sent with the image, as a manifest's labels cell writes it
    sent = predict(client, "yellow", label="green|red")
    refused = client.post("/predict", params={"label": "red|purple"},
                          files={"file": ("y.png", picture("yellow"), "image/png")})
    assert refused.status_code == 422 and "purple" in refused.json()["detail"]
    flush(client)
    # label sets: by token, in any order and with duplicates; [] means "none of them"
    red = answers["red"]
    put = client.put(f"/predictions/{red['id']}/label",
                     json={"labels": ["green", "red", "red"], "token": red["label_token"]})
    assert put.status_code == 200, put.text
    assert put.json() == {"id": red["id"], "label": "red|green", "labels": ["red", "green"]}
    dark = answers["dark"]
    assert client.put(f"/predictions/{dark['id']}/label",
                      json={"labels": [], "token": dark["label_token"]}).status_code == 200
    for bad in ({"labels": ["purple"]}, {"label": "red"}, {"labels": ["red", 3]}):
        response = client.put(f"/predictions/{red['id']}/label",
                              json={**bad, "token": red["label_token"]})
        assert response.status_code == 422, (bad, response.text)
    flush(client)

    def check(c) -> None:
        items = {i["id"]: i for i in c.get("/predictions", params={"limit": 100}).json()["items"]}
        assert len(items) == 5
        for name, answer in answers.items():
            assert items[answer["id"]]["predicted_labels"] == EXPECTED[name]
            assert items[answer["id"]]["predicted"] == "|".join(EXPECTED[name])
        assert items[red["id"]]["true_labels"] == ["red", "green"]
        assert items[red["id"]]["label"] == "red|green"
        assert items[dark["id"]]["true_labels"] == [] and items[dark["id"]]["label"] == ""
        assert items[sent["id"]]["true_labels"] == ["red", "green"]
        assert items[answers["blue"]["id"]]["true_labels"] is None
        # label=X: X in the predicted set ("red" is in {red} and twice in {red, green})
        found = c.get("/predictions", params={"label": "red"}).json()
        assert {i["id"] for i in found["items"]} == {red["id"], answers["yellow"]["id"],
                                                    sent["id"]}
        assert c.get("/predictions", params={"label": "re"}).json()["total"] == 0
        # the other filters keep working beside it
        assert c.get("/predictions", params={"label": "red", "labelled": "true"}
                     ).json()["total"] == 2
        assert c.get("/predictions", params={"class": "red|green"}).json()["total"] == 2

    check(client)
    client.__exit__(None, None, None)  # stop the server; a new one reads the same table
    check(make_client(pg()))


def test_per_label_monitoring(make_client, pg) -> None:
    client = make_client(pg())
    for name in ("red", "yellow", "yellow", "dark"):
        predict(client, name)
    flush(client)
    metrics = client.get("/metrics").text
    assert 'visiondeck_multilabel_predictions_total{model="colour-tags"} 4.0' in metrics
    for label, count in (("red", 3), ("green", 2), ("blue", 0)):
        assert (f'visiondeck_label_positives_total{{label="{label}",model="colour-tags"}} '
                f'{count}.0') in metrics
    summary = client.get("/monitor/summary")
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["task"] == "multilabel" and body["window"]["size"] == 4
    rates = {e["label"]: e for e in body["labels"]}
    assert rates["red"]["live_rate"] == 0.75 and rates["green"]["live_rate"] == 0.5
    assert rates["blue"]["live_rate"] == 0.0 and rates["blue"]["positives"] == 0
    assert rates["red"]["reference_rate"] is None  # this Bundle records no reference


def test_summary_compares_live_rates_with_the_reference(make_client, tmp_path: Path) -> None:
    """A multi-label Bundle with reference statistics (class_counts: the images each label
    passed on): the summary gives each label's reference rate beside its live one, and the
    single-label drift window stays off (its tests read a softmax)."""
    from visiondeck.monitor.reference import ReferenceStats, save_reference
    from visiondeck.monitor.stats import FeatureSummary

    folder = make_multilabel(tmp_path / "with-reference")
    reference = ReferenceStats(
        classes=tuple(CLASSES), n=20, source="val+test", class_counts=(10, 4, 0),
        features={"confidence": FeatureSummary.from_values(np.linspace(0.5, 1.0, 20))})
    info = json.loads((folder / "bundle.json").read_text())
    info["reference"] = save_reference(folder, reference)
    write_bundle_json(folder, info)
    client = make_client(bundle=str(folder), store=False)
    for name in ("red", "yellow"):
        predict(client, name)
    body = client.get("/monitor/summary").json()
    rates = {e["label"]: e for e in body["labels"]}
    assert body["window"] == {"size": 2, "capacity": 1000, "source": "process"}
    assert [rates[c]["reference_rate"] for c in CLASSES] == [0.5, 0.2, 0.0]
    assert rates["red"]["live_rate"] == 1.0 and rates["red"]["difference"] == 0.5
    assert rates["green"]["difference"] == 0.3
    assert body["reference"]["n"] == 20
    assert "visiondeck_drift_score" not in client.get("/metrics").text


def test_reference_rates_come_from_the_reference_counts() -> None:
    from visiondeck.monitor.reference import ReferenceStats
    from visiondeck.serve.monitoring.label_rates import label_rates

    reference = ReferenceStats(classes=tuple(CLASSES), n=10, source="val+test",
                               class_counts=(5, 2, 0), features={})
    rows = label_rates(CLASSES, 4, [3, 2, 1], reference)
    assert [r["reference_rate"] for r in rows] == [0.5, 0.2, 0.0]
    assert [r["difference"] for r in rows] == [0.25, 0.3, 0.25]
    assert [r["live_rate"] for r in label_rates(CLASSES, 0, [0, 0, 0], None)] == [None] * 3


def test_review_queue_refuses_multilabel_models(make_client, ml_bundle: Path) -> None:
    client = make_client(bundle=str(ml_bundle))
    response = client.get("/review/queue")
    assert response.status_code == 409
    assert response.json()["error"] == "multilabel_review"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_an_older_table_gains_the_label_set_columns(database: str, tmp_path: Path) -> None:
    from visiondeck.serve.history.store import PredictionQuery, PredictionStore

    if database == "postgresql":
        require_postgres()
        url, prefix = PG_URL, unique_prefix()
    else:
        url, prefix = f"sqlite:///{tmp_path / 'old.db'}", "vd_"
    older_table(url, prefix, [make_record(0, predicted="red")],
                ("predicted_labels", "true_labels"))
    store = PredictionStore(url, prefix=prefix)
    try:
        [row] = store.query(PredictionQuery())[0]
        assert row.predicted == "red" and row.predicted_labels is None
        assert store.set_label(row.id, "red|green", ["red", "green"])
        assert store.get(row.id).true_labels == ["red", "green"]
    finally:
        store.drop()
        store.dispose()


def test_label_sets_wait_in_the_journal_through_an_outage_and_a_restart(outage: Outage,  # noqa: F811
                                                                        tmp_path: Path
                                                                        ) -> None:
    """A true set for a row still queued, and one for a row journaled while the database
    is away, reach it after the writer is stopped and another takes its journal over."""
    journal = tmp_path / "journal"
    store = outage.store()
    first = _writer(store, journal)
    queued, late = make_record(1), make_record(2)
    queued.predicted_labels, late.predicted_labels = ["red"], ["red", "green"]
    first.submit(late)
    _until(lambda: first.journaled == 1, "a journaled row")
    first.submit(queued)
    assert first.update_pending(queued.id, "red", ["red"]) is True  # still in memory
    assert first.update_pending(late.id, "", []) is True  # journaled: a late label
    _until(lambda: first.failures > 0, "a failed database write")
    assert first.close(flush_timeout_s=1) == 2
    outage.up()
    second = _writer(store, journal)
    _until(lambda: second.replayed == 2, "the first journal taken over")
    assert second.flush(30)
    second.close()
    store.dispose()
    stored = outage.reader.get(late.id)
    assert stored.true_labels == [] and stored.label == ""
    assert stored.predicted_labels == ["red", "green"]
    assert outage.reader.get(queued.id).true_labels == ["red"]


def test_a_journal_of_the_previous_format_keeps_its_plain_labels(tmp_path: Path) -> None:
    """Format 1 journaled a late label as its text; taken over, it is read as that text."""
    import sqlite3

    from visiondeck.serve.history.journal_file import _SCHEMA, _take_journal, decode_label

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA)
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO labels VALUES (?, ?, ?)", ("a" * 32, "left", 0))
    taken: list = []
    _take_journal(path, lambda rows, labels, origin: taken.extend(labels))
    assert [(i, decode_label(text)) for i, text in taken] == [("a" * 32, ("left", None))]


def test_a_label_name_holding_the_separator_is_refused_at_load(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """"a|b" must mean two labels: a Bundle naming one label "a|b" is refused by the API
    engine and the Lambda handler alike (one check, `labelsets.check_servable`)."""
    from tests.deploy.test_lambda import call, event, lam
    from visiondeck.export.errors import BundleError
    from visiondeck.serve.inference.engine import load_model

    folder = make_multilabel(tmp_path / "bundle")
    info = json.loads((folder / "bundle.json").read_text())
    renamed = {CLASSES[0]: "red|ish"}
    info["classes"] = [renamed.get(c, c) for c in info["classes"]]
    info["calibration"]["label_thresholds"] = {
        renamed.get(c, c): t for c, t in info["calibration"]["label_thresholds"].items()}
    write_bundle_json(folder, info)
    with pytest.raises(BundleError, match=r"may not contain '\|': red\|ish"):
        load_model(str(folder))
    lam._MODELS.clear()
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(folder))
    monkeypatch.delenv("VISIONDECK_BUNDLE_S3", raising=False)
    status, body = call(event("v2-http-post-png.json"))
    assert status == 503 and "may not contain '|': red|ish" in body["detail"]
    lam._MODELS.clear()
