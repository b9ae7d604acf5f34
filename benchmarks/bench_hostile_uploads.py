"""What hostile uploads cost `visiondeck serve`: peak RSS and /health latency under attack.

A tiny 28×28 grey Bundle (a real ONNX model built with `onnx.helper`: no torch, no
training) is served by `python -m visiondeck serve` with its defaults; then, phase by
phase, 8 client threads post the same worst-case upload over and over while one more
thread times `GET /health` every 20 ms on its own connection:

- `huge_png`:  a 6300×6300 grey PNG, all zeros (~38 KB on the wire, 40 M pixels decoded)
- `ztxt_png`:  a 28×28 grey PNG carrying 30 zTXt chunks of 1 MB each (~30 KB on the wire,
               30 MB of text once inflated)
- `huge_jpeg`: a 6000×6000 colour JPEG of one flat colour (~0.6 MB, 36 M pixels)
- `deep_json`: `{"image": [[[[...]]]]}` nested 100,000 deep (~200 KB)
- `mixed`:     the four at once, two threads each

For each phase it reports the server's peak RSS (the whole process tree: VmHWM reset at
the phase's start through /proc/PID/clear_refs, or the highest 20 ms sample where that
cannot be reset), /health p50/p99/max, and the answers the uploads got (status: count).
A healthy server refuses or shrinks each of these in well under a second, never answers
5xx, and keeps /health fast: the issue's goal is under 600 MB and a p99 under 50 ms.

    python benchmarks/bench_hostile_uploads.py                  # 8 s a phase
    python benchmarks/bench_hostile_uploads.py --seconds 15 --json out.json

Client and server share the machine's cores, so latencies are an upper bound.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import _free_port, _stop, _wait_http  # a sibling script, not a package

PYTHON = sys.executable
CONCURRENCY = 8


# --------------------------------------------------------------------------- the Bundle


def write_bundle(folder: Path, size: int = 28) -> Path:
    """A 28×28 grey, ten-class Bundle: the logits are the mean brightness times ten weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import save_file

    from visiondeck.export.bundle import write_bundle_json

    folder.mkdir(parents=True, exist_ok=True)
    weights = np.linspace(-1.0, 1.0, 10, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("Mul", ["flat", "weights"], ["logits"])],
        "brightness",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(weights, "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, folder / "model.onnx")
    save_file({"weights": weights}, str(folder / "weights.safetensors"))
    write_bundle_json(folder, {
        "name": "brightness28", "architecture": "mean_brightness",
        "classes": [f"c{i}" for i in range(10)],
        "input": {"image_size": size, "channels": 1, "resize": "stretch",
                  "mean": [0.5], "std": [0.5]},  # the exporter's default limits
        "calibration": {"temperature": 1.0, "reject": None, "decision_threshold": None},
        "metrics": {"accuracy": 0.1},
        "variants": {"fp32": {"file": "model.onnx",
                              "bytes": (folder / "model.onnx").stat().st_size}},
    })
    return folder


# ----------------------------------------------------------------------------- payloads


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (6300, 6300), 0).save(buffer, "PNG")
    return buffer.getvalue()


def ztxt_png(chunks: int = 30, inflated: int = 1_000_000) -> bytes:
    """Text chunks before IDAT, so even reading the header inflates them."""
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buffer, "PNG")
    png = buffer.getvalue()
    text = zlib.compress(b"a" * inflated, 9)
    extra = b"".join(_png_chunk(b"zTXt", b"note%d\0\0" % i + text) for i in range(chunks))
    return png[:33] + extra + png[33:]  # after the signature and IHDR


def huge_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (120, 140, 160)).save(buffer, "JPEG", quality=75)
    return buffer.getvalue()


def deep_json(depth: int = 100_000) -> bytes:
    return b'{"image": ' + b"[" * depth + b"]" * depth + b"}"


PAYLOADS = {
    "huge_png": (huge_png, "application/octet-stream"),
    "ztxt_png": (ztxt_png, "application/octet-stream"),
    "huge_jpeg": (huge_jpeg, "application/octet-stream"),
    "deep_json": (deep_json, "application/json"),
}


# ------------------------------------------------------------------------------ process


def _tree(pid: int) -> list[int]:
    """pid and its descendants (a multi-worker server forks)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssWatch:
    """Peak RSS of the server's process tree over one phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.hwm_reset = True
        for pid in _tree(self.pid):
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as fh:
                    fh.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
            except OSError:
                self.hwm_reset = False
        self.sampled = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled = max(self.sampled, sum(_status_kb(p, "VmRSS") for p in _tree(self.pid)))
            self._stop.wait(0.02)

    def stop(self) -> int:
        """Peak RSS in kB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.hwm_reset:
            return max(self.sampled, sum(_status_kb(p, "VmHWM") for p in _tree(self.pid)))
        return self.sampled


def start_server(bundle: Path, port: int, work: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONDECK_")}
    env["VISIONDECK_WATCH_INTERVAL_S"] = "0"
    log = open(work / "server.log", "ab")  # noqa: SIM115 - the server owns it until it stops
    proc = subprocess.Popen([PYTHON, "-m", "visiondeck", "serve", str(bundle), "--port",
                             str(port), "--data-dir", str(work / "data"), "--log-level",
                             "warning"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=work)
    try:
        _wait_http(port, "/ready", proc)
    except RuntimeError as exc:
        tail = (work / "server.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{exc}:\n{tail}") from exc
    return proc


# -------------------------------------------------------------------------------- load


def _post_loop(port: int, body: bytes, content_type: str, stop: threading.Event,
               statuses: Counter, times: list[float], lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn.request("POST", "/predict", body, {"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
            status = str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        with lock:
            statuses[status] += 1
            times.append(time.perf_counter() - started)
    conn.close()


def _health_loop(port: int, stop: threading.Event, out: list[float]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        started = time.perf_counter()
        conn.request("GET", "/health")
        conn.getresponse().read()
        out.append((time.perf_counter() - started) * 1000.0)
        stop.wait(0.02)
    conn.close()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_phase(port: int, pid: int, bodies: list[tuple[bytes, str]], seconds: float
              ) -> dict[str, Any]:
    stop, lock = threading.Event(), threading.Lock()
    statuses: Counter = Counter()
    times: list[float] = []
    health: list[float] = []
    watch = RssWatch(pid)
    watch.start()
    threads = [threading.Thread(target=_health_loop, args=(port, stop, health))]
    threads += [threading.Thread(target=_post_loop, args=(port, body, kind, stop, statuses,
                                                          times, lock))
                for body, kind in bodies]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    peak_kb = watch.stop()
    return {
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "health_p50_ms": round(_percentile(health, 0.50), 2),
        "health_p99_ms": round(_percentile(health, 0.99), 2),
        "health_max_ms": round(max(health, default=float("nan")), 2),
        "health_probes": len(health),
        "uploads": sum(statuses.values()),
        "upload_mean_ms": round(statistics.fmean(times) * 1000.0, 1) if times else None,
        "statuses": dict(sorted(statuses.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    payloads = {name: (make(), kind) for name, (make, kind) in PAYLOADS.items()}
    for name, (body, _kind) in payloads.items():
        print(f"{name:10s} {len(body):>10,} bytes")
    with tempfile.TemporaryDirectory(prefix="visiondeck-hostile-") as tmp:
        work = Path(tmp)
        bundle = write_bundle(work / "bundle")
        port = _free_port()
        proc = start_server(bundle, port, work)
        try:
            results: dict[str, Any] = {
                "idle": run_phase(port, proc.pid, [], min(args.seconds, 3.0))}
            for name, payload in payloads.items():
                results[name] = run_phase(port, proc.pid, [payload] * CONCURRENCY,
                                          args.seconds)
            mixed = [payload for payload in payloads.values() for _ in range(2)]
            results["mixed"] = run_phase(port, proc.pid, mixed, args.seconds)
        finally:
            _stop(proc)
    overall = {"peak_rss_mb": max(r["peak_rss_mb"] for r in results.values()),
               "health_p99_ms_worst_phase": max(r["health_p99_ms"] for r in results.values())}
    print(f"\n{'phase':10s} {'peak RSS':>9s} {'/health p50':>12s} {'p99':>8s} {'max':>8s} "
          f"{'uploads':>8s} {'mean ms':>8s}  statuses")
    for name, r in results.items():
        print(f"{name:10s} {r['peak_rss_mb']:>6.0f} MB {r['health_p50_ms']:>9.1f} ms "
              f"{r['health_p99_ms']:>5.1f} ms {r['health_max_ms']:>5.0f} ms {r['uploads']:>8d} "
              f"{r['upload_mean_ms'] or 0:>8.1f}  {r['statuses']}")
    print(f"\noverall: peak RSS {overall['peak_rss_mb']:.0f} MB, worst /health p99 "
          f"{overall['health_p99_ms_worst_phase']:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps({"phases": results, "overall": overall,
                                         "seconds_per_phase": args.seconds,
                                         "concurrency": CONCURRENCY}, indent=2) + "\n")


if __name__ == "__main__":
    main()
