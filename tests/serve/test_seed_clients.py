"""The seeds' own client code, run verbatim against `visiondeck serve`.

The CIFAR-10 seed's Flask API answered `{"success", "prediction", "confidence",
"top3_predictions": [{"class", "confidence"}]}` and its README's test script reads those
keys; the dandelion seed's FastAPI posted to `/predict/` with a trailing slash. Each
script below is the seed's text, character for character, except the host and port (the
seeds served on localhost:5000 and :8000) and the image file name.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tests.serve.conftest import learnable_png

#: the CIFAR-10 seed's "Test avec script Python" (seeds/004, its README)
CIFAR_CLIENT = '''
import requests
import json

def test_api():
    # Test health endpoint
    health = requests.get('http://localhost:5000/health')
    print("Health check:", health.json())
    
    # Test prediction
    with open('cat.jpg', 'rb') as f:
        files = {'image': f}
        response = requests.post('http://localhost:5000/predict', files=files)
        print("Prediction:", json.dumps(response.json(), indent=2))

if __name__ == '__main__':
    test_api()
'''

#: the CIFAR-10 seed's "Exemple avec Python"
CIFAR_EXAMPLE = '''
import requests

url = "http://localhost:5000/predict"
files = {'image': open('test_image.jpg', 'rb')}
response = requests.post(url, files=files)
print(response.json())
'''


def _run(script: str, port: int, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(workdir)
    code = script.replace("localhost:5000", f"127.0.0.1:{port}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "seed_client.py", "exec"), {"__name__": "__main__"})
    return out.getvalue()


def test_the_cifar_seed_client_reads_its_keys(live_server, tmp_path, monkeypatch) -> None:
    port = live_server()
    (tmp_path / "cat.jpg").write_bytes(learnable_png("right"))  # sniffed, not named
    (tmp_path / "test_image.jpg").write_bytes(learnable_png("left"))
    printed = _run(CIFAR_CLIENT, port, tmp_path, monkeypatch)
    assert printed.startswith("Health check: {'status': 'ok'")
    answer = json.loads(printed.split("Prediction:", 1)[1])
    assert answer["success"] is True
    assert answer["prediction"] == answer["predicted"] == "right"
    assert answer["confidence"] == answer["top3_predictions"][0]["confidence"]
    assert [t["class"] for t in answer["top3_predictions"]] == [
        t["class"] for t in answer["top_k"]]
    assert sorted(t["class"] for t in answer["top3_predictions"]) == ["left", "middle", "right"]
    confidences = [t["confidence"] for t in answer["top3_predictions"]]
    assert confidences == sorted(confidences, reverse=True)
    assert abs(sum(confidences) - 1.0) < 1e-4  # three classes: all of the probability
    example = _run(CIFAR_EXAMPLE, port, tmp_path, monkeypatch)
    assert "'prediction': 'left'" in example and "'success': True" in example


def test_top3_stays_three_whatever_top_k(client) -> None:
    answer = client.post("/predict", params={"top_k": 1},
                         files={"image": ("l.png", learnable_png("left"))}).json()
    assert len(answer["top_k"]) == 1
    assert len(answer["top3_predictions"]) == 3
    assert answer["top3_predictions"][0] == {"class": answer["top_k"][0]["class"],
                                             "confidence": answer["top_k"][0]["probability"]}


def test_the_dandelion_seed_route_with_a_slash(live_server) -> None:
    import requests

    port = live_server()
    response = requests.post(f"http://127.0.0.1:{port}/predict/", allow_redirects=False,
                             files={"file": ("x.png", learnable_png("middle"))}, timeout=30)
    assert response.status_code == 200
    assert response.json()["predicted"] == "middle"
