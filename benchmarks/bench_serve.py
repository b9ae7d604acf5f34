"""Load test of `visiondeck serve` against a naive seed-style server, on loopback.

What it measures, for a Fashion-MNIST Bundle (28×28 grey) and an EfficientNet-Lite0 Bundle
(224×224 RGB):
- cold start: from spawning `python -m visiondeck serve BUNDLE` to the first 200 on /ready
  (median of --cold-runs spawns);
- throughput and p50/p99 latency at concurrency 1, 8 and 32 (closed loop: each of C
  connections sends its next request when the previous answer arrives), with the mean
  micro-batch size read from the server's /metrics;
- the same for a naive server written the way the seeds write theirs: Flask's server, one
  request at a time, the torch model run eagerly per request with torchvision transforms.

The load generator is wrk when it is installed (`apt-get install wrk`; one thread, C, so the
client takes little of the two cores), otherwise (or with `--client python`) a bounded
asyncio client in this file (pre-built multipart requests
over keep-alive connections; the naive server speaks HTTP/1.0, so it reconnects per
request, as a browser or curl would against it). Each level stops after --requests
requests or --max-seconds, whichever comes first. Client and server share the machine's
cores, so the figures are a lower bound for a dedicated server.

    python benchmarks/bench_serve.py --fm-bundle BUNDLE --effnet-bundle BUNDLE
    python benchmarks/bench_serve.py --fm-run runs/fashion_mnist   # exports it first
    python benchmarks/bench_serve.py                                # builds both Bundles

Results: benchmarks/results/serve.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


# ------------------------------------------------------------------------ load generator


def multipart_request(host: str, port: int, path: str, field: str, filename: str,
                      data: bytes, content_type: str) -> bytes:
    boundary = "----visiondeckbench7f3a"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench_serve\r\n"
            f"Accept: */*\r\nConnection: keep-alive\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status = lines[0].split(" ")[:2]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    close = version == "HTTP/1.0" or headers.get("connection", "").lower() == "close" \
        or "content-length" not in headers
    return int(status), close, body


async def _load(host: str, port: int, request: bytes, concurrency: int, total: int,
                max_seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    remaining = total
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal remaining, errors
        reader = writer = None
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                await writer.drain()
                status, close, _body = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                writer = None
                continue
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors += 1
            if close:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000.0
    return {
        "concurrency": concurrency, "requests": len(latencies), "errors": errors,
        "seconds": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 1) if wall else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "mean_ms": round(float(ms.mean()), 2) if len(ms) else None,
    }


def _wrk_seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def _load_wrk(host: str, port: int, body: bytes, content_type: str, concurrency: int,
              seconds: float, work: Path) -> dict[str, Any]:
    """The same closed loop with wrk (C, one thread): far less client CPU than Python."""
    body_file = work / "wrk-body.bin"
    body_file.write_bytes(body)
    script = work / "wrk-post.lua"
    script.write_text(
        f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*all"); f:close()\n'
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{content_type}"\n')
    out = subprocess.run(
        # --timeout: a slow server at concurrency 32 answers in seconds; measure it, do not
        # count its answers as client timeouts
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
         "--timeout", "60s",
         "-s", str(script), f"http://{host}:{port}/predict"],
        check=True, capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in ([\d.]+\w+)", out).group(1))
    wall = _wrk_seconds(re.search(r"requests in ([\d.]+\w+)", out).group(1))
    percentile = {m.group(1): _wrk_seconds(m.group(2)) * 1000
                  for m in re.finditer(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    mean = re.search(r"Latency\s+(\S+)", out)
    return {
        "concurrency": concurrency, "requests": requests, "errors": errors,
        "seconds": round(wall, 3), "throughput_rps": round(requests / wall, 1),
        "p50_ms": round(percentile["50"], 2) if "50" in percentile else None,
        "p99_ms": round(percentile["99"], 2) if "99" in percentile else None,
        "mean_ms": round(_wrk_seconds(mean.group(1)) * 1000, 2) if mean else None,
    }


# ------------------------------------------------------------------------ servers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(port: int, path: str, proc: subprocess.Popen, timeout: float = 120) -> float:
    """Seconds until GET path answers 200 (measured from now)."""
    import http.client

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see its log")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"no 200 from {path} within {timeout} s")


def _start_visiondeck(bundle: Path, port: int, data_dir: Path, extra: list[str],
                      extra_env: dict[str, str]
                      ) -> tuple[subprocess.Popen, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONDECK_")}
    env["VISIONDECK_WATCH_INTERVAL_S"] = "0"
    env.update(extra_env)  # settings with no `serve` option, e.g. VISIONDECK_MONITOR=false
    started = time.perf_counter()
    proc = subprocess.Popen([PYTHON, "-m", "visiondeck", "serve", str(bundle), "--port",
                             str(port), "--data-dir", str(data_dir), "--log-level", "warning",
                             *extra], stdout=_log(data_dir / "server.log"),
                            stderr=subprocess.STDOUT, env=env, cwd=data_dir)
    _wait_http(port, "/ready", proc)
    return proc, time.perf_counter() - started


def _log(path: Path):
    """Server output goes to a file: a pipe nobody reads would block a chatty server."""
    return open(path, "ab")


def _start_naive(bundle: Path, port: int, log_dir: Path) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    proc = subprocess.Popen([PYTHON, __file__, "--naive-server", str(bundle), "--port",
                             str(port)], stdout=_log(log_dir / "naive.log"),
                            stderr=subprocess.STDOUT)
    _wait_http(port, "/health", proc)
    return proc, time.perf_counter() - started


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def naive_server(bundle_dir: str, port: int) -> None:
    """The seeds' way: Flask, torch eager, PIL + torchvision transforms, one request at a time."""
    import torch
    from flask import Flask, jsonify, request
    from torchvision import transforms

    from visiondeck.export.bundle import load_bundle
    from visiondeck.export.torch_model import load_torch_model
    from visiondeck.imaging import ALLOWED_FORMATS

    bundle = load_bundle(bundle_dir)
    model = load_torch_model(bundle)
    spec = bundle.input
    mode = "L" if spec.channels == 1 else "RGB"
    prepare = transforms.Compose([
        transforms.Resize((spec.image_size, spec.image_size)), transforms.ToTensor(),
        transforms.Normalize(list(spec.mean), list(spec.std))])
    app = Flask("naive")

    @app.route("/health")
    def health():
        return jsonify({"status": "ok"})

    @app.route("/predict", methods=["POST"])
    def predict():
        file = request.files["image"]
        image = Image.open(file.stream, formats=sorted(ALLOWED_FORMATS)).convert(mode)
        tensor = prepare(image).unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(model(tensor), dim=1)[0]
        top = torch.topk(probs, 3)
        return jsonify({"success": True, "prediction": bundle.classes[int(top.indices[0])],
                        "confidence": float(top.values[0]),
                        "top3_predictions": [{"class": bundle.classes[int(i)],
                                              "confidence": float(v)}
                                             for v, i in zip(top.values, top.indices,
                                                             strict=True)]})

    app.run(host="127.0.0.1", port=port, threaded=False)


# ------------------------------------------------------------------------ bundles & images


def _export(run: Path, out: Path) -> Path:
    from visiondeck.export.onnx_export import export_run

    if not (out / "bundle.json").exists():
        print(f"exporting {run} → {out}", flush=True)
        export_run(run, out, parity_images=16)
    return out


def _train(overrides: list[str], workdir: Path) -> Path:
    from visiondeck.config import load_recipe
    from visiondeck.train.runner import train

    before = Path.cwd()
    os.chdir(workdir)
    try:
        return train(load_recipe(None, overrides), progress=False).run_dir
    finally:
        os.chdir(before)


def build_effnet_bundle(work: Path) -> Path:
    """EfficientNet-Lite0 (offline ImageNet weights) at 224, after one optimiser step."""
    out = work / "effnet_bundle"
    if (out / "bundle.json").exists():
        return out
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        folder = work / "effnet_images" / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                folder / f"{i}.png")
    run = _train([f"data.source={work / 'effnet_images'}", "data.image_size=224",
                  "data.channels=3", "data.augment=none", "data.val_fraction=0.25",
                  "data.test_fraction=0.25", "model.name=efficientnet_lite0",
                  "model.pretrained=true", "train.epochs=1", "train.batch_size=32",
                  f"output_dir={work / 'runs'}", "name=effnet_bench"], work)
    return _export(run, out)


def build_fm_bundle(work: Path) -> Path:
    out = work / "fm_bundle"
    if (out / "bundle.json").exists():
        return out
    run = _train([
        "data.source=builtin:fashion-mnist", "data.image_size=28", "data.channels=1",
        "data.augment=none", "model.name=simple_cnn", "train.epochs=1", "train.batch_size=256",
        f"output_dir={work / 'runs'}", "name=fm_bench"], work)
    return _export(run, out)


def sample_image(bundle: Path) -> tuple[bytes, str, str]:
    """A realistic upload for the model: a Fashion-MNIST test PNG, or a JPEG photo."""
    info = json.loads((bundle / "bundle.json").read_text())
    if info["input"]["channels"] == 1:
        from visiondeck.data.builtin import load_fashion_mnist

        array = load_fashion_mnist("test").images[0]  # an ankle boot, 28×28 grey
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, "PNG")
        return buffer.getvalue(), "item.png", "image/png"
    from skimage import data as skdata

    buffer = io.BytesIO()
    Image.fromarray(skdata.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), "chelsea.jpg", "image/jpeg"


# ------------------------------------------------------------------------ the benchmark


def _batch_stats(port: int) -> tuple[float, float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    total = re.search(r"^visiondeck_inference_batch_size_sum (\S+)$", text, re.M)
    count = re.search(r"^visiondeck_inference_batch_size_count (\S+)$", text, re.M)
    return float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0


class Server:
    """One server under test, started once (its cold starts measured) and kept running."""

    def __init__(self, kind: str, workers: int = 1) -> None:
        self.kind, self.workers = kind, workers
        self.label = kind if kind == "naive" else f"{kind}×{workers}"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.colds: list[float] = []
        self.rounds: dict[int, list[dict[str, Any]]] = {}

    def start(self, bundle: Path, args: argparse.Namespace, work: Path) -> None:
        for i in range(args.cold_runs):
            self.port = _free_port()
            if self.kind == "visiondeck":
                self.proc, cold = _start_visiondeck(
                    bundle, self.port, _fresh(work / f"data-{self.workers}-{i}"),
                    ["--workers", str(self.workers), *args.serve_args], dict(args.serve_env))
            else:
                self.proc, cold = _start_naive(bundle, self.port, _fresh(work / f"naive-{i}"))
            self.colds.append(cold)
            if i < args.cold_runs - 1:
                _stop(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def request(self, image: tuple[bytes, str, str]) -> bytes:
        """The benchmark's upload as a whole HTTP request to this server."""
        data, filename, content_type = image
        return multipart_request("127.0.0.1", self.port, "/predict", "image", filename, data,
                                 content_type)

    def measure(self, image: tuple[bytes, str, str], concurrency: int,
                args: argparse.Namespace, work: Path) -> dict[str, Any]:
        request = self.request(image)
        head, _, body = request.partition(b"\r\n\r\n")
        multipart_type = re.search(rb"Content-Type: (multipart/form-data; boundary=\S+)",
                                   head).group(1).decode()
        ours = self.kind == "visiondeck"
        before = _batch_stats(self.port) if ours else (0.0, 0.0)
        if args.client == "wrk":
            result = _load_wrk("127.0.0.1", self.port, body, multipart_type, concurrency,
                               args.max_seconds, work)
        else:
            result = asyncio.run(_load("127.0.0.1", self.port, request, concurrency,
                                       args.requests, args.max_seconds))
        if ours:
            after = _batch_stats(self.port)
            runs = after[1] - before[1]
            # with several workers each scrape reads whichever worker answers: no mean then
            result["mean_batch"] = (round((after[0] - before[0]) / runs, 2)
                                    if runs and self.workers == 1 else None)
        self.rounds.setdefault(concurrency, []).append(result)
        print(f"  {self.label:12s} c={concurrency:<3d} {result['throughput_rps']:8.1f} req/s  "
              f"p50 {result['p50_ms'] or float('nan'):7.2f} ms  "
              f"p99 {result['p99_ms'] or float('nan'):7.2f} ms  "
              f"errors {result['errors']}" + (f"  batch {result.get('mean_batch')}"
                                              if ours else ""), flush=True)
        return result

    def summary(self) -> dict[str, Any]:
        """Per level, the round with the median throughput (its latencies with it), and
        every round's throughput."""
        levels = []
        for results in self.rounds.values():
            ranked = sorted(results, key=lambda r: r["throughput_rps"])
            median = dict(ranked[(len(ranked) - 1) // 2])
            median["rounds_rps"] = [r["throughput_rps"] for r in results]
            levels.append(median)
        return {"cold_start_s": round(statistics.median(self.colds), 3),
                "cold_start_runs_s": [round(c, 3) for c in self.colds], "levels": levels}


def bench_model(bundle: Path, image: tuple[bytes, str, str], args: argparse.Namespace,
                work: Path) -> dict[str, Server]:
    """All servers up at once, then `--rounds` rounds; in each, every level is measured on
    every server back to back (in a rotating order), so a slow spell of a shared machine
    hits all servers alike instead of whichever happened to run then."""
    servers = [Server("visiondeck", n) for n in args.workers]
    if not args.skip_naive:
        servers.append(Server("naive"))
    try:
        for server in servers:
            server.start(bundle, args, work)
            asyncio.run(_load("127.0.0.1", server.port, server.request(image), 8, args.warmup,
                              60))
        for round_ in range(args.rounds):
            print(f" round {round_ + 1} of {args.rounds}", flush=True)
            for concurrency in args.concurrency:
                shift = round_ % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    server.measure(image, concurrency, args, work)
    finally:
        for server in servers:
            server.stop()
    return {server.label: server for server in servers}


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fm-bundle", type=Path)
    parser.add_argument("--fm-run", type=Path, help="a Fashion-MNIST run folder to export")
    parser.add_argument("--effnet-bundle", type=Path)
    parser.add_argument("--work", type=Path, help="where built Bundles go (default: a temp dir)")
    parser.add_argument("--requests", type=int, default=2000, help="per level (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=8.0,
                        help="per level and round (cap)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure every level on every server this many times, "
                             "interleaved; the median round is reported")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="`visiondeck serve --workers N` for each N, against one naive run")
    parser.add_argument("--client", choices=["wrk", "python"],
                        default="wrk" if shutil.which("wrk") else "python",
                        help="load generator: wrk (Debian package, default when installed) or "
                             "the bounded asyncio client in this file")
    parser.add_argument("--only", choices=["fashion_mnist", "efficientnet_lite0"])
    parser.add_argument("--serve-env", action="append", default=[], metavar="VISIONDECK_X=V",
                        type=lambda text: tuple(text.split("=", 1)),
                        help="environment for `visiondeck serve` (repeatable)")
    parser.add_argument("--serve-args", nargs=argparse.REMAINDER, default=[],
                        help="extra `visiondeck serve` options (last on the line)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve.json")
    parser.add_argument("--naive-server", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_server:
        naive_server(args.naive_server, args.port)
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="vd-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    models: dict[str, Path] = {}
    if args.only in (None, "fashion_mnist"):
        models["fashion_mnist"] = args.fm_bundle or (
            _export(args.fm_run, work / "fm_bundle") if args.fm_run else build_fm_bundle(work))
    if args.only in (None, "efficientnet_lite0"):
        models["efficientnet_lite0"] = args.effnet_bundle or build_effnet_bundle(work)

    import onnxruntime

    results: dict[str, Any] = {
        "command": "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                    "load_average_at_start": list(os.getloadavg())},
        "method": f"closed loop on loopback ({args.client}), client and server on the same "
                  "machine; visiondeck serve with its defaults (SQLite history on, thumbnails "
                  "on, drift monitoring on) plus --workers N and --serve-args; all servers up "
                  "at once, each level measured on each server in turn, --rounds times; the "
                  "median round per server and level is reported",
        "workers": args.workers,
        "rounds": args.rounds,
        "serve_args": args.serve_args,
        "serve_env": dict(args.serve_env),
        "models": {},
    }
    for name, bundle in models.items():
        info = json.loads((bundle / "bundle.json").read_text())
        image = sample_image(bundle)
        print(f"{name}: {bundle} ({info['architecture']}, {info['input']['image_size']} px, "
              f"upload {len(image[0])} bytes)", flush=True)
        entry: dict[str, Any] = {"bundle": str(bundle), "architecture": info["architecture"],
                                 "input": info["input"], "upload_bytes": len(image[0])}
        servers = bench_model(bundle, image, args, work)
        by_workers = {str(n): servers[f"visiondeck×{n}"].summary() for n in args.workers}
        entry["visiondeck"] = by_workers[str(args.workers[0])]
        entry["visiondeck_by_workers"] = by_workers
        if not args.skip_naive:
            entry["naive"] = servers["naive"].summary()
            entry["speedup_by_workers"] = {n: {
                str(ours["concurrency"]): round(ours["throughput_rps"]
                                                / max(theirs["throughput_rps"], 1e-9), 2)
                for ours, theirs in zip(result["levels"], entry["naive"]["levels"],
                                        strict=True)} for n, result in by_workers.items()}
            entry["speedup"] = entry["speedup_by_workers"][str(args.workers[0])]
        results["models"][name] = entry
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
