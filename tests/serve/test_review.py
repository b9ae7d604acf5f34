"""The review queue API (GET /review/queue, GET /predictions/{id}/image) against real
SQLite and real PostgreSQL: order on known probabilities (margin and entropy recomputed
here with numpy, independently of serve/history/scores.py), filters, counts, labelling,
kept images, and the upgrade of a table written before the margin/entropy columns."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from tests.serve.conftest import learnable_png
from tests.serve.test_store import (
    PG_URL,
    make_record,
    older_table,
    require_postgres,
    unique_prefix,
)
from visiondeck.serve.api.auth import KeyRing
from visiondeck.serve.history.store import PredictionQuery, PredictionStore
from visiondeck.serve.routes.review import DRIFT_PERCENTILE, drift_cut

BASE = datetime(2026, 3, 1, tzinfo=UTC)
#: (top-k probabilities, unknown, drifted): chosen so margin, entropy and flags disagree
ROWS = [
    ([0.90, 0.06, 0.04], False, False),
    ([0.50, 0.45, 0.05], False, False),  # smallest margin among unflagged
    ([0.40, 0.30, 0.20], False, False),  # highest entropy (the rest, 0.1, is one outcome)
    ([0.70], False, False),  # top 1 only: runner-up at most 0.3
    ([0.95, 0.03, 0.02], True, False),  # flagged unknown, confident
    ([0.80, 0.15, 0.05], False, True),  # drifted
    ([0.60, 0.38, 0.02], True, True),  # both flags
]


@pytest.fixture(params=["sqlite", "postgresql"])
def review_client(request, make_client, tmp_path):
    """(client, admin headers) on SQLite or PostgreSQL; drift monitoring on (the default)."""
    ring = KeyRing(tmp_path / "keys.json")
    _, admin = ring.add("ops", ("admin",))
    changes = {"api_keys_file": ring.path}
    if request.param == "postgresql":
        require_postgres()
        changes |= {"database_url": PG_URL, "table_prefix": unique_prefix()}
    client = make_client(**changes)
    yield client, {"X-API-Key": admin}
    if request.param == "postgresql":
        client.app.state.services.store.drop()


def _expected(top_k: list[float]) -> tuple[float, float]:
    """margin and entropy (nats) by the documented definition, with numpy."""
    p = np.asarray(top_k, dtype=np.float64)
    second = p[1] if p.size > 1 else min(p[0], 1.0 - p[0])
    full = np.append(p, max(0.0, 1.0 - p.sum()))
    full = full[full > 1e-12]
    return float(p[0] - second), float(-(full * np.log(full)).sum())


def _insert_rows(services, **changes) -> list[str]:
    cut = drift_cut(services)
    assert cut is not None, "the test Bundle carries an embedding reference"
    records = []
    for i, (top_k, unknown, drifted) in enumerate(ROWS):
        features = {
            "ref": cut.reference,
            "z": [0.0],
            "r": cut.residual * (3.0 if drifted else 0.5) + (1.0 if drifted else 0.0),
        }
        records.append(
            make_record(
                i,
                predicted="left",
                confidence=top_k[0],
                unknown=unknown,
                top_k=[
                    {"class": c, "probability": p}
                    for c, p in zip(("left", "middle", "right"), top_k, strict=False)
                ],
                created=BASE + timedelta(minutes=i),
                features=features,
                **changes,
            )
        )
    services.store.insert_many(records)
    return [r.id for r in records]


def test_queue_orders_rows_by_known_probabilities(review_client) -> None:
    client, _ = review_client
    ids = _insert_rows(client.app.state.services)
    expected = [_expected(top_k) for top_k, _, _ in ROWS]
    flags = [int(u) + int(d) for _, u, d in ROWS]

    def order(sort: str) -> list[str]:
        body = client.get("/review/queue", params={"sort": sort}).json()
        return [item["id"] for item in body["items"]]

    by_margin = sorted(range(len(ROWS)), key=lambda i: expected[i][0])
    by_entropy = sorted(range(len(ROWS)), key=lambda i: -expected[i][1])
    priority = sorted(range(len(ROWS)), key=lambda i: (-flags[i], expected[i][0]))
    assert order("margin") == [ids[i] for i in by_margin]
    assert order("entropy") == [ids[i] for i in by_entropy]
    assert order("priority") == [ids[i] for i in priority]
    assert order("newest") == ids[::-1]
    body = client.get("/review/queue").json()
    for item in body["items"]:
        i = ids.index(item["id"])
        assert item["margin"] == pytest.approx(expected[i][0], abs=1e-6)
        assert item["entropy"] == pytest.approx(expected[i][1], abs=1e-6)
        assert item["drifted"] is ROWS[i][2] and item["unknown"] is ROWS[i][1]
        assert item["has_thumbnail"] is True and "thumbnail" not in item
    assert expected[3][0] == pytest.approx(0.4)  # top-1 only: 0.7 - (1 - 0.7)
    assert expected[2][1] == pytest.approx(-sum(p * math.log(p) for p in (0.4, 0.3, 0.2, 0.1)))
    assert body["drift"]["percentile"] == DRIFT_PERCENTILE
    assert body["drift"]["reference"] == drift_cut(client.app.state.services).reference


def test_filters_counts_and_paging(review_client) -> None:
    client, admin = review_client
    services = client.app.state.services
    ids = _insert_rows(services)
    other = make_record(
        99,
        model_version="v2",
        created=BASE + timedelta(days=2),
        top_k=[{"class": "left", "probability": 0.5}, {"class": "right", "probability": 0.5}],
        confidence=0.5,
    )
    services.store.insert_many([other])
    for i in (0, 1):
        assert (
            client.put(
                f"/predictions/{ids[i]}/label", json={"label": "middle"}, headers=admin
            ).status_code
            == 200
        )
    everything = client.get("/review/queue").json()
    assert (everything["waiting"], everything["labelled"], everything["total"]) == (6, 2, 6)
    assert ids[0] not in {item["id"] for item in everything["items"]}
    v1 = client.get("/review/queue", params={"model_version": "v1", "status": "all"}).json()
    assert (v1["waiting"], v1["labelled"], v1["total"]) == (5, 2, 7)
    assert {item["model_version"] for item in v1["items"]} == {"v1"}
    labelled = client.get("/review/queue", params={"status": "labelled"}).json()
    assert {item["id"] for item in labelled["items"]} == {ids[0], ids[1]}
    assert all(item["label"] == "middle" for item in labelled["items"])
    window = {
        "since": (BASE + timedelta(minutes=2)).isoformat(),
        "until": (BASE + timedelta(minutes=5)).isoformat(),
    }
    timed = client.get("/review/queue", params={**window, "sort": "newest"}).json()
    assert [item["id"] for item in timed["items"]] == [ids[4], ids[3], ids[2]]
    assert (timed["waiting"], timed["labelled"]) == (3, 0)
    first = client.get("/review/queue", params={"limit": 2, "sort": "margin"}).json()
    rest = client.get("/review/queue", params={"limit": 10, "offset": 2, "sort": "margin"}).json()
    whole = client.get("/review/queue", params={"sort": "margin"}).json()
    assert [i["id"] for i in first["items"] + rest["items"]] == [i["id"] for i in whole["items"]]
    assert client.get("/review/queue", params={"status": "nope"}).status_code == 422
    assert client.get("/review/queue", params={"limit": 0}).status_code == 422


def test_labelling_from_the_queue_takes_the_label_rule(review_client) -> None:
    """The page labels through PUT /predictions/{id}/label: without the prediction's token,
    an admin key; the label is then stored, counted, and out of the waiting queue."""
    client, admin = review_client
    answers = [
        client.post("/predict", files={"file": learnable_png(c, seed=i)}).json()
        for i, c in enumerate(("left", "right", "middle"))
    ]
    assert client.app.state.services.writer.flush(10)
    queue = client.get("/review/queue").json()
    assert {i["id"] for i in queue["items"]} == {a["id"] for a in answers}
    assert (queue["waiting"], queue["labelled"]) == (3, 0)
    target = queue["items"][0]["id"]
    refused = client.put(f"/predictions/{target}/label", json={"label": "left"})
    assert refused.status_code == 401  # no token, no key: the rule of every label form
    saved = client.put(f"/predictions/{target}/label", json={"label": "left"}, headers=admin)
    assert saved.status_code == 200
    after = client.get("/review/queue").json()
    assert (after["waiting"], after["labelled"]) == (2, 1)
    assert target not in {i["id"] for i in after["items"]}
    assert client.get(f"/predictions/{target}").json()["label"] == "left"


def test_kept_original_image(make_client, tmp_path) -> None:
    kept = tmp_path / "uploads"
    client = make_client(keep_uploads=kept)
    data = learnable_png("right", size=24, seed=7)
    answer = client.post("/predict", files={"file": data}).json()
    services = client.app.state.services
    assert services.writer.flush(10)
    next(o for o in services.observers if hasattr(o, "written")).flush()
    image = client.get(f"/predictions/{answer['id']}/image")
    assert image.status_code == 200 and image.content == data
    assert image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert client.get("/review/queue").json()["images"] == {"originals": True, "thumbnails": True}
    lost = make_record(5)  # a row whose image was never kept
    services.store.insert_many([lost])
    missing = client.get(f"/predictions/{lost.id}/image")
    assert missing.status_code == 404 and missing.json()["error"] == "image_not_kept"
    assert client.get(f"/predictions/{'0' * 32}/image").json()["error"] == "not_found"


def test_no_image_without_keep_uploads(client) -> None:
    answer = client.post("/predict", files={"file": learnable_png("left")}).json()
    assert client.app.state.services.writer.flush(10)
    refused = client.get(f"/predictions/{answer['id']}/image")
    assert refused.status_code == 404 and refused.json()["error"] == "uploads_not_kept"
    assert client.get("/review/queue").json()["images"]["originals"] is False
    page = client.get("/review")
    assert page.status_code == 200
    assert "does not keep uploaded images" in page.text and "VISIONDECK_KEEP_UPLOADS" in page.text


def test_queue_and_image_need_a_key_when_keys_are_required(make_client, tmp_path) -> None:
    ring = KeyRing(tmp_path / "keys.json")
    _, key = ring.add("app", ("predict",))
    client = make_client(api_keys_file=ring.path, require_api_key=True)
    assert client.get("/review/queue").status_code == 401
    assert client.get(f"/predictions/{'0' * 32}/image").status_code == 401
    assert client.get("/review/queue", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/review").status_code == 200  # the page shell stays public


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_an_older_table_gets_margin_and_entropy_filled(database: str, tmp_path) -> None:
    """A table from before the review queue (no margin/entropy columns, rows in it): the
    first `create()` adds the columns and fills every row from its stored top-k."""
    if database == "postgresql":
        require_postgres()
    url = f"sqlite:///{tmp_path / 'old.db'}" if database == "sqlite" else PG_URL
    prefix = unique_prefix()
    records = [
        make_record(
            i,
            confidence=top_k[0],
            created=BASE + timedelta(minutes=i),
            top_k=[{"class": f"c{j}", "probability": p} for j, p in enumerate(top_k)],
        )
        for i, (top_k, _, _) in enumerate(ROWS)
    ]
    older_table(url, prefix, records, ("margin", "entropy"))  # the previous release's table
    upgraded = PredictionStore(url, prefix=prefix)
    try:
        upgraded.create()
        with upgraded.engine.connect() as conn:
            stored = {
                row.id: (row.margin, row.entropy)
                for row in conn.execute(
                    sa.select(
                        upgraded.table.c.id, upgraded.table.c.margin, upgraded.table.c.entropy
                    )
                )
            }
        assert set(stored) == {r.id for r in records}
        for record, (top_k, _, _) in zip(records, ROWS, strict=True):
            margin, entropy = _expected(top_k)
            assert stored[record.id][0] == pytest.approx(margin, abs=1e-9)
            assert stored[record.id][1] == pytest.approx(entropy, abs=1e-9)
        assert upgraded._fill_scores() == 0  # nothing left for the next start
        with upgraded.engine.begin() as conn:  # in batches smaller than the table, too
            conn.execute(upgraded.table.update().values(margin=None, entropy=None))
        assert upgraded._fill_scores(batch=3) == len(records)
        again = {r.id: (r.margin, r.entropy) for r in upgraded.iter_records(PredictionQuery())}
        assert again == stored
    finally:
        upgraded.drop()
        upgraded.dispose()


def test_uncertainty_of_full_partial_and_odd_rows() -> None:
    from visiondeck.serve.history.scores import uncertainty

    full = [0.5, 0.3, 0.15, 0.05]  # every class stored: the exact entropy
    margin, entropy = uncertainty(
        [{"class": str(i), "probability": p} for i, p in enumerate(full)], 0.5
    )
    assert margin == pytest.approx(0.2)
    assert entropy == pytest.approx(-float(np.sum(np.multiply(full, np.log(full)))))
    alone = uncertainty([{"class": "a", "probability": 0.4}], 0.4)
    assert alone[0] == pytest.approx(0.0)  # the runner-up may have had as much as 0.4
    # odd stored values (hand-edited rows, other writers) are skipped, never an error
    top = uncertainty([{"probability": 0.9}], 0.9)
    assert uncertainty("junk", 0.9) == top and uncertainty(None, 0.9) == top
    nan = [{"probability": float("nan")}, {"probability": 0.9}, "x", {"probability": 7}]
    assert uncertainty(nan, 0.9) == top
    assert uncertainty([], float("nan")) == (0.0, 0.0)
