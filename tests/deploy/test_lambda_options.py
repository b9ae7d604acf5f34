"""The Lambda handler's options no other test sets: VISIONDECK_VARIANT=int8, VISIONDECK_TOP_K
and VISIONDECK_BUNDLE=models:/NAME@ALIAS (issue 24).

Same parts as test_lambda.py: its recorded API Gateway events, the colour model whose
answers are known in advance, the one handler module (its per-container model cache is
cleared before each test, a cold start). The INT8 file is made by the exporter's own
quantiser (`quantize_static_int8`, calibrated on colour pictures); the registry is a real
embedded MLflow store (SQLite + local artifacts), written by `register` and `promote`.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from tests.deploy.conftest import CLASSES, COLOURS, colour_png, write_colour_bundle
from tests.deploy.test_lambda import SETTINGS, call, event, lam

#: the recorded POST events and the colour each one's picture shows
RECORDED = {"v1-rest-post-png.json": "red", "v1-rest-post-json.json": "blue",
            "v2-http-post-png.json": "green", "v2-http-post-json.json": "red"}


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cold start per test, no setting leaking in; VISIONDECK_MODEL_CACHE is set then
    removed so that whatever the handler sets is undone after the test."""
    for name in (*SETTINGS, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VISIONDECK_MODEL_CACHE", str(tmp_path / "unused"))
    monkeypatch.delenv("VISIONDECK_MODEL_CACHE")
    lam._MODELS.clear()


def _picture_event(colour: str, seed: int, **changes) -> dict:
    picture = colour_png(colour, size=12, seed=seed)
    return event("v2-http-post-png.json", body=base64.b64encode(picture).decode(), **changes)


def _version(folder: Path, onnx_name: str) -> str:
    """The version the REST API and the handler report: sha256(bundle.json + ONNX)[:12]."""
    return hashlib.sha256((folder / "bundle.json").read_bytes()
                          + (folder / onnx_name).read_bytes()).hexdigest()[:12]


# ----------------------------------------------------------------------------------- INT8


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour Bundle with a static INT8 variant, as `export_run(int8=True)` records it."""
    import numpy as np

    from visiondeck.export.bundle import load_bundle, write_bundle_json
    from visiondeck.export.quantize import quantize_static_int8

    folder = write_colour_bundle(tmp_path_factory.mktemp("int8") / "bundle")
    bundle = load_bundle(folder)
    calibration = [np.stack([bundle.prepare(colour_png(colour, size=12, seed=seed))
                             for colour in COLOURS for seed in range(4)])]
    done = quantize_static_int8(folder / "model.onnx", folder / "model.int8.onnx", calibration)
    info = dict(bundle.info)
    info["variants"] = {**info["variants"], "int8": {
        "file": "model.int8.onnx", "method": done.method,
        "bytes": (folder / "model.int8.onnx").stat().st_size}}
    write_bundle_json(folder, info)
    return folder


def test_the_int8_variant_is_the_model_that_runs(int8_bundle: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx
    import onnxruntime as ort

    ops = {node.op_type for node in onnx.load(str(int8_bundle / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # a genuinely quantised graph

    opened: list[str] = []

    class Recording(ort.InferenceSession):  # the real session, its file noted
        def __init__(self, path, *args, **kwargs) -> None:
            opened.append(Path(path).name)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Recording)
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(int8_bundle))
    fp32 = {name: call(event(name)) for name in RECORDED}
    assert opened == ["model.onnx"]
    lam._MODELS.clear()
    monkeypatch.setenv("VISIONDECK_VARIANT", "int8")
    int8 = {name: call(event(name)) for name in RECORDED}
    assert opened == ["model.onnx", "model.int8.onnx"]  # one session per cold start

    for name, label in RECORDED.items():
        (status, body), (status_fp32, body_fp32) = int8[name], fp32[name]
        assert status == status_fp32 == 200, body
        assert body["model"]["variant"] == "int8" and body_fp32["model"]["variant"] == "fp32"
        assert body["model"]["version"] == _version(int8_bundle, "model.int8.onnx")
        assert body_fp32["model"]["version"] == _version(int8_bundle, "model.onnx")
        assert body["predicted"] == body_fp32["predicted"] == label
        assert [i["class"] for i in body["top_k"]] == [i["class"] for i in body_fp32["top_k"]]
        for mine, theirs in zip(body["top_k"], body_fp32["top_k"], strict=True):
            assert mine["probability"] == pytest.approx(theirs["probability"], abs=0.02)
    status, described = call(event("v2-http-get-model.json"))
    assert status == 200 and described["variant"] == "int8"


def test_an_int8_variant_the_bundle_lacks_is_503(colour_bundle: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(colour_bundle))  # exported without --int8
    monkeypatch.setenv("VISIONDECK_VARIANT", "int8")
    status, body = call(event("v2-http-post-png.json"))
    assert status == 503 and body["error"] == "model_unavailable"
    assert "has no 'int8' model" in body["detail"], body
    assert "--int8" in body["hint"]


# ---------------------------------------------------------------------------------- top_k


def test_the_top_k_setting_sizes_every_answer(colour_bundle: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(colour_bundle))
    monkeypatch.setenv("VISIONDECK_TOP_K", "2")  # the default is 3, the colour model's classes
    for name, label in RECORDED.items():
        ev = event(name)
        ev.pop("queryStringParameters", None)  # some recorded events ask ?top_k= themselves
        status, body = call(ev)
        assert status == 200 and body["predicted"] == label, body
        assert len(body["top_k"]) == 2 and body["top_k"][0]["class"] == label
    for colour in CLASSES:
        status, body = call(_picture_event(colour, seed=5))
        assert status == 200 and len(body["top_k"]) == 2 and body["predicted"] == colour
    # ?top_k= still decides for its request, by the REST API's rule
    for asked, entries in (("1", 1), ("3", 3), ("100", len(CLASSES))):
        status, body = call(_picture_event("blue", 6, queryStringParameters={"top_k": asked}))
        assert status == 200 and len(body["top_k"]) == entries, (asked, body)
    for asked in ("0", "101"):
        status, body = call(_picture_event("blue", 6, queryStringParameters={"top_k": asked}))
        assert status == 422 and body["error"] == "invalid_request", (asked, body)
    # and the next request without one is back to the setting
    assert len(call(_picture_event("red", 7))[1]["top_k"]) == 2


@pytest.mark.parametrize("text", ["0", "101", "-2", "three", "2.5"])
def test_an_invalid_top_k_setting_fails_at_load(colour_bundle: Path, text: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(colour_bundle))
    monkeypatch.setenv("VISIONDECK_TOP_K", text)
    for ev in (event("v2-http-get-model.json"), event("v2-http-post-png.json")):
        status, body = call(ev)
        assert status == 503 and body["error"] == "model_unavailable", (text, body)
        assert "VISIONDECK_TOP_K" in body["detail"]


# ------------------------------------------------------------------------------ models:/


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An embedded MLflow store holding model `colours`: version 1 the colour Bundle,
    version 2 the same network with its classes listed in reverse (a red picture is
    "blue"), version 3 a copy whose digest tag was removed; alias `live` → version 1."""
    from mlflow import MlflowClient

    from visiondeck.export.bundle import load_bundle, write_bundle_json
    from visiondeck.registry.models import promote, register
    from visiondeck.registry.runlog import DIGEST_TAG
    from visiondeck.registry.store import embedded_uri

    base = tmp_path_factory.mktemp("registry")
    uri = embedded_uri(base / "runs")
    first = write_colour_bundle(base / "v1")
    second = write_colour_bundle(base / "v2")
    write_bundle_json(second, {**load_bundle(second).info, "classes": CLASSES[::-1]})
    third = write_colour_bundle(base / "v3", name="colours-unverified")
    versions = {}
    for folder in (first, second, third):
        # a Bundle folder with no training run: its gate cannot be checked, hence force
        done = register(folder, "colours", force=True, tracking_uri=uri)
        versions[done.version] = folder
    assert sorted(versions) == ["1", "2", "3"]
    MlflowClient(tracking_uri=uri, registry_uri=uri).delete_model_version_tag(
        "colours", "3", DIGEST_TAG)
    promote("colours", "1", alias="live", tracking_uri=uri)
    return {"uri": uri, "versions": versions}


def test_a_models_uri_answers_with_the_aliased_version(
        registry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from visiondeck.registry.models import promote

    uri, versions = registry["uri"], registry["versions"]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the function's /tmp
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "visiondeck")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VISIONDECK_BUNDLE", "models:/colours@live")
    try:
        status, body = call(_picture_event("red", seed=1))
        assert status == 200 and body["predicted"] == "red", body
        assert body["model"]["version"] == _version(versions["1"], "model.onnx")
        status, described = call(event("v2-http-get-model.json"))
        assert described["source"] == "models:/colours@live"
        assert described["classes"] == CLASSES
        # the download went to /tmp (Lambda's only writable place), checked and cached
        cache = tmp_path / "visiondeck-models"
        assert [p.name for p in cache.rglob("bundle.json")] == ["bundle.json"]

        # the alias moves: the next cold start serves version 2 (reversed classes)
        promote("colours", "2", alias="live", tracking_uri=uri)
        assert call(_picture_event("red", seed=1))[1]["predicted"] == "red"  # warm: still v1
        lam._MODELS.clear()
        status, body = call(_picture_event("red", seed=1))
        assert status == 200 and body["predicted"] == "blue", body
        assert body["model"]["version"] == _version(versions["2"], "model.onnx")

        # a version without its digest tag is refused: 503, nothing cached for it
        promote("colours", "3", alias="live", tracking_uri=uri)
        lam._MODELS.clear()
        status, body = call(_picture_event("red", seed=1))
        assert status == 503 and body["error"] == "model_unavailable", body
        assert "no recorded Bundle digest" in body["detail"]
        assert "visiondeck register" in body["hint"]
        assert not [p for p in cache.rglob("*") if p.name.startswith("3")]
    finally:
        promote("colours", "1", alias="live", tracking_uri=uri)


def test_the_registry_answer_matches_the_folder_it_came_from(
        registry: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """models:/NAME/VERSION and the registered folder give the same answer, byte for byte."""
    monkeypatch.setenv("VISIONDECK_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry["uri"])
    answers = []
    for source in ("models:/colours/2", str(registry["versions"]["2"])):
        lam._MODELS.clear()
        monkeypatch.setenv("VISIONDECK_BUNDLE", source)
        status, body = call(_picture_event("green", seed=3))
        assert status == 200, body
        answers.append({k: body[k] for k in ("predicted", "confidence", "top_k")}
                       | {"version": body["model"]["version"]})
    assert answers[0] == answers[1] and answers[0]["predicted"] == "green"
    assert answers[0]["version"] == _version(registry["versions"]["2"], "model.onnx")
    assert list((tmp_path / "cache").rglob("bundle.json"))  # VISIONDECK_MODEL_CACHE was used
