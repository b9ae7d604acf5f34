"""How long one page of the review queue takes as the prediction history grows.

The queue's scores (margin, entropy, drift flag) are computed per row in the database from
the stored top-k JSON (serve/history/review.py), so a page costs a scan of the rows its
filters leave. This measures `review_queue` (the function behind GET /review/queue) on
SQLite and PostgreSQL with N synthetic rows (3 classes stored per row, a drift projection
on each), for each sort order and with a model-version filter that keeps a tenth; then
the one-time fill of margin and entropy that upgrading an older table costs
(`PredictionStore._fill_scores`, every row's scores emptied first).

    .venv/bin/python benchmarks/bench_review_queue.py --rows 10000 100000
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np

from visiondeck.serve.history.review import DriftCut, ReviewQuery, review_queue
from visiondeck.serve.history.store import PredictionRecord, PredictionStore

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _records(n: int, seed: int = 0) -> list[PredictionRecord]:
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet([0.5] * 10, size=n)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for i, p in enumerate(probabilities):
        order = np.argsort(-p)[:3]
        rows.append(
            PredictionRecord(
                id=uuid.uuid4().hex,
                created_at=base + timedelta(seconds=i),
                model_name="m",
                model_version=f"v{i % 10}",
                predicted=f"c{order[0]}",
                confidence=float(p[order[0]]),
                unknown=bool(rng.random() < 0.02),
                top_k=[{"class": f"c{j}", "probability": round(float(p[j]), 6)} for j in order],
                latency_ms=1.0,
                image_sha256=f"{i:064x}",
                image_width=28,
                image_height=28,
                label=None if rng.random() < 0.9 else "c0",
                thumbnail=b"\x89PNG" + bytes(300),
                features={"ref": "r1", "z": [0.1] * 8, "r": float(rng.gamma(2.0, 1.0))},
            )
        )
    return rows


def _time(store: PredictionStore, query: ReviewQuery, repeat: int = 5) -> float:
    review_queue(store, query)  # warm the cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        review_queue(store, query)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    cut = DriftCut("r1", 5.0)
    print(f"{'database':<11}{'rows':>9}  {'sort':<9}{'filter':<9}{'page ms':>9}")
    for rows in args.rows:
        records = _records(rows)
        for database in args.databases:
            url = (
                f"sqlite:////tmp/bench_review_{uuid.uuid4().hex[:6]}.db"
                if database == "sqlite"
                else PG_URL
            )
            store = PredictionStore(url, prefix=f"vdbench_{uuid.uuid4().hex[:8]}_")
            try:
                for start in range(0, rows, 5000):
                    store.insert_many(records[start : start + 5000])
                for sort in ("priority", "margin", "entropy", "newest"):
                    for label, version in (("none", None), ("version", "v3")):
                        ms = _time(store, ReviewQuery(sort=sort, drift=cut, model_version=version))
                        print(f"{database:<11}{rows:>9}  {sort:<9}{label:<9}{ms:>9.1f}")
                with store.engine.begin() as conn:
                    conn.execute(store.table.update().values(margin=None, entropy=None))
                start = time.perf_counter()
                filled = store._fill_scores()
                ms = (time.perf_counter() - start) * 1000
                assert filled == rows
                print(f"{database:<11}{rows:>9}  {'fill':<9}{'upgrade':<9}{ms:>9.1f}")
            finally:
                store.drop()
                store.dispose()


if __name__ == "__main__":
    main()
