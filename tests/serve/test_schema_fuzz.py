"""Schemathesis against the service's own OpenAPI schema: no input may produce a 5xx.

Every operation of /openapi.json gets generated requests - positive ones (valid per the
schema) and negative ones (bodies, query strings and path parameters that break it), a
bounded number of each - sent in-process to the ASGI app that `create_app` builds on the
shared tiny Bundle, with an admin key so fuzzing reaches past authentication. Checks: no
server error, and every response has a status code, content type and body the schema
declares for that operation.

Schemathesis' pytest plugin (`from_fixture` + `parametrize`) does not run under pytest 9
(it reads `request.node._nodeid`), so each operation is driven through its Hypothesis
strategy (`APIOperation.as_strategy`) here, one test per operation.

CI runs a fixed, derandomized set of examples so a red build is reproducible; for a longer
hunt with fresh inputs every run:
`VISIONDECK_FUZZ_EXAMPLES=500 VISIONDECK_FUZZ_RANDOM=1 pytest tests/serve/test_schema_fuzz.py`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis  # a dev dependency: missing, the suite fails rather than skips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from visiondeck.serve.api.auth import KeyRing

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# per operation and generation mode: bounded, so the module stays well under 60 s
EXAMPLES = int(os.environ.get("VISIONDECK_FUZZ_EXAMPLES", "25"))
DERANDOMIZE = os.environ.get("VISIONDECK_FUZZ_RANDOM") != "1"


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every documented operation, read from an app that is never
    started (no Bundle is loaded, nothing is written)."""
    from visiondeck.serve.app import create_app
    from visiondeck.serve.settings import ServeSettings

    spec = create_app(ServeSettings(bundle="", store=False, watch_interval_s=0)).openapi()
    return sorted((method.upper(), path) for path, item in spec["paths"].items()
                  for method in item if method in ("get", "post", "put", "delete", "patch"))


@pytest.fixture(scope="module")
def admin_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    ring = KeyRing(tmp_path_factory.mktemp("fuzz-keys") / "keys.json")
    _, key = ring.add("fuzzer", ("predict", "admin"))
    return ring.path, key


@pytest.fixture(scope="module")
def api_schema(serve_bundle: Path, admin_key, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[object]:
    from schemathesis.python.asgi import shutdown_lifespans

    from visiondeck.serve.app import create_app
    from visiondeck.serve.settings import ServeSettings

    keys_file, _ = admin_key
    app = create_app(ServeSettings(
        bundle=str(serve_bundle), data_dir=tmp_path_factory.mktemp("fuzz-data"),
        api_keys_file=keys_file, require_api_key=True, watch_interval_s=0,
        preprocess_threads=2, intra_op_threads=1))
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    shutdown_lifespans()  # the app's lifespan, started by the first request


@pytest.mark.parametrize(("method", "path"), _operations())
def test_no_input_makes_the_server_fail(api_schema, admin_key, method: str, path: str
                                        ) -> None:
    _, key = admin_key
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=2 * EXAMPLES, deadline=None, database=None,
              derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def fuzz(case) -> None:
        case.call_and_validate(headers={"X-API-Key": key}, checks=CHECKS)

    fuzz()


def test_the_app_serves_again_after_its_lifespan_restarts(make_settings) -> None:
    """Found by the fuzzer: a second lifespan (a second TestClient, an ASGI host restarting
    the app) hit the micro-batcher's shut-down thread pool, a 500 on every prediction."""
    from fastapi.testclient import TestClient

    from tests.serve.conftest import learnable_png
    from visiondeck.serve.app import create_app

    app = create_app(make_settings())
    for _ in range(2):
        with TestClient(app, raise_server_exceptions=False) as client:
            answer = client.post("/predict", files={"file": learnable_png("left")})
            assert answer.status_code == 200, answer.text


def test_a_label_token_with_non_ascii_characters_is_refused_not_a_crash(make_client) -> None:
    """Found by the fuzzer: hmac.compare_digest raised TypeError (a 500) on "\\x80"."""
    client = make_client()
    answer = client.put(f"/predictions/{'0' * 32}/label", json={"label": "x", "token": "\x80"})
    assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
