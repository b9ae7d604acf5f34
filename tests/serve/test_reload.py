"""Hot reload: a new model version is swapped in without dropping a request."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from tests.serve.conftest import learnable_png
from visiondeck.serve.api.auth import KeyRing


def _set_temperature(bundle: Path, value: float) -> None:
    info = json.loads((bundle / "bundle.json").read_text())
    info["calibration"]["temperature"] = value
    (bundle / "bundle.json").write_text(json.dumps(info))


def test_admin_reload_swaps_version(make_client, bundle_copy, tmp_path) -> None:
    _, key = KeyRing(tmp_path / "keys.json").add("ops", ("admin",))
    client = make_client(bundle=str(bundle_copy), api_keys_file=tmp_path / "keys.json")
    headers = {"X-API-Key": key}
    image = {"file": learnable_png("left")}
    before = client.post("/predict", files=image).json()
    _set_temperature(bundle_copy, 5.0)  # a new export: other calibration, same network
    reloaded = client.post("/admin/reload", headers=headers).json()
    assert reloaded["swapped"] is True
    assert reloaded["previous_version"] == before["model"]["version"]
    after = client.post("/predict", files=image).json()
    assert after["model"]["version"] == reloaded["model"]["version"] != before["model"]["version"]
    assert after["predicted"] == before["predicted"]
    assert after["confidence"] < before["confidence"]  # higher temperature, softer output
    assert client.get("/model").json()["calibration"]["temperature"] == 5.0
    again = client.post("/admin/reload", headers=headers).json()
    assert again["swapped"] is False
    assert 'visiondeck_model_reloads_total{outcome="swapped"} 1.0' in client.get("/metrics").text


def test_failed_reload_keeps_serving(make_client, bundle_copy, tmp_path) -> None:
    _, key = KeyRing(tmp_path / "keys.json").add("ops", ("admin",))
    client = make_client(bundle=str(bundle_copy), api_keys_file=tmp_path / "keys.json")
    (bundle_copy / "bundle.json").write_text("{ broken")
    response = client.post("/admin/reload", headers={"X-API-Key": key})
    assert response.status_code == 503 and "not valid JSON" in response.json()["detail"]
    assert client.post("/predict", files={"file": learnable_png("left")}).status_code == 200


def test_no_request_dropped_during_reloads(make_settings, bundle_copy) -> None:
    from visiondeck.serve.app import create_app

    app = create_app(make_settings(bundle=str(bundle_copy), store=False, max_wait_ms=5))
    engine = app.state.services.engine

    async def scenario() -> tuple[list[httpx.Response], set[str]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
                async def reloads() -> set[str]:
                    versions = set()
                    for temperature in (2.0, 3.0, 4.0):
                        await asyncio.sleep(0.02)
                        _set_temperature(bundle_copy, temperature)
                        model, swapped = await engine.reload()
                        assert swapped
                        versions.add(model.version)
                    return versions

                jobs = [client.post("/predict", files={"file": learnable_png("right", seed=i)})
                        for i in range(40)]
                *responses, versions = await asyncio.gather(*jobs, reloads())
        return responses, versions

    responses, versions = asyncio.run(scenario())
    assert [r.status_code for r in responses] == [200] * 40
    seen = {r.json()["model"]["version"] for r in responses}
    assert len(versions) == 3 and seen  # every request answered, by whichever version


def test_watcher_reloads_on_change(make_client, bundle_copy) -> None:
    client = make_client(bundle=str(bundle_copy), watch_interval_s=0.1)
    first = client.get("/model").json()["version"]
    _set_temperature(bundle_copy, 7.0)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if client.get("/model").json()["version"] != first:
            break
        time.sleep(0.1)
    assert client.get("/model").json()["calibration"]["temperature"] == 7.0
