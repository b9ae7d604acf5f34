"""GET /predictions?sha256=...: every stored prediction of one image (the Compare page's
view of one image under several model versions)."""

from __future__ import annotations

import hashlib

from tests.serve.conftest import learnable_png


def test_filter_by_image_sha256(make_client) -> None:
    client = make_client()
    image, other = learnable_png("left", seed=1), learnable_png("right", seed=2)
    ids = [client.post("/predict", files={"file": data}).json()["id"]
           for data in (image, other, image)]
    assert client.app.state.services.writer.flush(10)
    sha = hashlib.sha256(image).hexdigest()
    page = client.get("/predictions", params={"sha256": sha}).json()
    assert page["total"] == 2 and {item["id"] for item in page["items"]} == {ids[0], ids[2]}
    assert all(item["image_sha256"] == sha for item in page["items"])
    csv_rows = client.get("/predictions", params={"sha256": sha, "format": "csv"}).text
    assert csv_rows.count("\n") == 3  # header + 2 rows
    assert client.get("/predictions", params={"sha256": "0" * 64}).json()["total"] == 0
    assert client.get("/predictions", params={"sha256": "not-a-hash"}).status_code == 422
