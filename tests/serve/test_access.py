"""What `require_api_key` closes, and what stays public whatever the settings.

The route walk is the tripwire: every route the app has, except the public list below,
must refuse an anonymous request with 401 when keys are required, so a route added later
cannot slip in open. Widening the public list is a decision to make here, in review.
"""

from __future__ import annotations

import re
import time

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Mount, Route

from tests.serve.conftest import learnable_png
from tests.servers import free_port
from visiondeck.serve.api.auth import KeyRing

#: (method, path template) anyone may call: probes, the served model's description, the
#: page shells (they fetch everything else through the API with the key typed in the page)
#: and the API's documentation
PUBLIC = frozenset({
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/model"),
    ("GET", "/"), ("GET", "/history"), ("GET", "/compare"), ("GET", "/model-card"),
    ("GET", "/monitor"), ("GET", "/review"), ("GET", "/favicon.ico"),
    ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"),
})
PUBLIC_MOUNTS = frozenset({"/static"})  # the pages' scripts, styles and icon
#: routes that must be among the refused ones (so the walk cannot pass by finding nothing)
MUST_BE_CLOSED = frozenset({
    ("POST", "/predict"), ("POST", "/predict/batch"), ("POST", "/explain"),
    ("GET", "/predictions"), ("GET", "/predictions/{prediction_id}"),
    ("GET", "/predictions/{prediction_id}/thumbnail"),
    ("PUT", "/predictions/{prediction_id}/label"), ("GET", "/monitor/summary"),
    ("GET", "/metrics"), ("POST", "/admin/reload"),
})
_PARAM = re.compile(r"\{[^}]+\}")


@pytest.fixture
def keys(tmp_path):
    ring = KeyRing(tmp_path / "keys.json")
    _, predict_key = ring.add("app", ("predict",))
    _, admin_key = ring.add("ops", ("predict", "admin"))
    return ring, predict_key, admin_key


def _endpoints(app) -> tuple[set[tuple[str, str]], set[str]]:
    """(method, path template) of every route, and the paths of mounted apps.

    FastAPI keeps included routers as branches of `app.routes`; `iter_route_contexts`
    (what FastAPI's own OpenAPI builder walks) flattens them into the routes requests meet.
    """
    endpoints, mounts = set(), set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, Mount):
            mounts.add(context.path)
        elif isinstance(route, APIRoute | Route):
            endpoints |= {(m, context.path) for m in context.methods or () if m != "HEAD"}
        else:
            raise AssertionError(f"a route of a kind this test does not know: {route!r}")
    return endpoints, mounts


def test_every_route_but_the_public_ones_wants_a_key(make_client, keys) -> None:
    ring, predict_key, _ = keys
    client = make_client(api_keys_file=ring.path, require_api_key=True, explain=False)
    endpoints, mounts = _endpoints(client.app)
    assert mounts == PUBLIC_MOUNTS
    assert endpoints >= PUBLIC, f"stale public entries: {PUBLIC - endpoints}"
    closed = endpoints - PUBLIC
    assert closed >= MUST_BE_CLOSED
    for method, template in sorted(endpoints):
        path = _PARAM.sub("0" * 32, template)  # every path parameter is a prediction id
        anonymous = client.request(method, path)
        if (method, template) in PUBLIC:
            assert anonymous.status_code != 401, (method, template)
            continue
        assert anonymous.status_code == 401, (method, template, anonymous.text)
        assert anonymous.json()["error"] == "unauthorized"
        # and it is the key that was missing: with one, the route answers (admin: 403)
        keyed = client.request(method, path, headers={"X-API-Key": predict_key})
        expected = 403 if template.startswith("/admin/") else None
        assert keyed.status_code == expected if expected else keyed.status_code != 401, (
            method, template, keyed.text)


def test_labels_thumbnails_and_metrics_need_a_key(make_client, keys) -> None:
    ring, predict_key, admin_key = keys
    client = make_client(api_keys_file=ring.path, require_api_key=True)
    key = {"X-API-Key": predict_key}
    body = client.post("/predict", files={"file": learnable_png("left")}, headers=key).json()
    client.app.state.services.writer.flush(10)
    label_url = f"/predictions/{body['id']}/label"
    # the token alone no longer labels: it proves the prediction was seen, not who asks
    assert client.put(label_url, json={"label": "middle", "token": body["label_token"]}
                      ).status_code == 401
    assert client.put(label_url, json={"label": "middle", "token": "0" * 32},
                      headers=key).status_code == 403  # a key, but neither token nor admin
    saved = client.put(label_url, json={"label": "middle", "token": body["label_token"]},
                       headers=key)
    assert saved.status_code == 200 and saved.json()["label"] == "middle"
    assert client.put(label_url, json={"label": "right"},
                      headers={"X-API-Key": admin_key}).status_code == 200
    assert client.get(f"/predictions/{body['id']}", headers=key).json()["label"] == "right"
    thumbnail = f"/predictions/{body['id']}/thumbnail"
    assert client.get(thumbnail).status_code == 401
    png = client.get(thumbnail, headers=key)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/metrics").status_code == 401
    assert 'visiondeck_predictions_total{cls="left"' in client.get("/metrics",
                                                                   headers=key).text


def test_metrics_and_labels_are_never_rate_limited(make_client, keys) -> None:
    """A scraper must see a server whose clients spent their budget (that is when it
    matters most), and a label answers a prediction already paid for: the key is checked,
    the bucket is not charged."""
    ring, predict_key, _ = keys
    client = make_client(api_keys_file=ring.path, require_api_key=True,
                         rate_limit="1/minute")
    key = {"X-API-Key": predict_key}
    image = {"file": learnable_png("left")}
    answers = [client.post("/predict", files=image, headers=key) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert [client.get("/metrics", headers=key).status_code for _ in range(3)] == [200] * 3
    made = answers[0].json()
    label = {"label": "left", "token": made["label_token"]}
    assert [client.put(f"/predictions/{made['id']}/label", json=label, headers=key).status_code
            for _ in range(2)] == [200, 200]
    assert client.get("/metrics").status_code == 401  # unmetered, not open


def test_ready_tells_no_one_but_an_admin_where_the_database_is(make_client, keys) -> None:
    """The database is down: /ready says "degraded", and its error text - which names the
    host, port and user - only to an admin key."""
    ring, predict_key, admin_key = keys
    port = free_port()  # nothing listens there
    client = make_client(api_keys_file=ring.path, require_api_key=True,
                         database_url=f"postgresql+psycopg://leaky_user@127.0.0.1:{port}/leaky_db")
    writer = client.app.state.services.writer
    writer.retry_max_s = 0.2
    key = {"X-API-Key": predict_key}
    assert client.post("/predict", files={"file": learnable_png("left")},
                       headers=key).status_code == 200
    deadline = time.monotonic() + 30
    while writer.status != "degraded" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.status == "degraded"
    admin = client.get("/ready", headers={"X-API-Key": admin_key})
    assert admin.status_code == 200 and str(port) in admin.json()["database_error"]
    for headers in ({}, key):
        ready = client.get("/ready", headers=headers)
        assert ready.status_code == 200
        body = ready.json()
        assert body["ready"] is True and body["database"] == "degraded"
        assert body["database_error"] is None
        for secret in (str(port), "127.0.0.1", "leaky_user", "leaky_db", "psycopg"):
            assert secret not in ready.text, (headers, secret)


def test_ready_keeps_the_load_error_for_callers_that_may_predict(make_client, keys,
                                                                 tmp_path) -> None:
    ring, predict_key, _ = keys
    missing = tmp_path / "not-a-bundle-here"
    client = make_client(api_keys_file=ring.path, require_api_key=True, bundle=str(missing))
    anonymous = client.get("/ready")
    assert anonymous.status_code == 503 and anonymous.json()["error"] is None
    assert str(missing) not in anonymous.text
    keyed = client.get("/ready", headers={"X-API-Key": predict_key})
    assert keyed.status_code == 503 and "not a Bundle" in keyed.json()["error"]
    # an open server tells anyone, as its /predict would
    open_server = make_client(bundle=str(missing), data_dir=tmp_path / "open")
    assert "not a Bundle" in open_server.get("/ready").json()["error"]
