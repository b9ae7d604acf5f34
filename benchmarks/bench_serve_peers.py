"""`visiondeck serve` against the servers a user would pick instead: LitServe and BentoML.

Every server serves the same ONNX model with the same bytes → tensor preparation: the peers
(`benchmarks/peers/`) run VisionDeck's own decoder, Bundle preparation, calibration and
ONNX Runtime settings, with the ONNX Runtime thread count VisionDeck's engine picks for the
model and worker count, and `OPENBLAS_NUM_THREADS=1` as `visiondeck serve` gives itself.
What differs is the serving stack. VisionDeck keeps its defaults: prediction history (SQLite,
thumbnails) and drift monitoring on.

Contenders, per model and worker count (`×N` = N worker processes):
- visiondeck: `visiondeck serve BUNDLE --workers N` (raw-ASGI fast path for POST /predict;
  with two workers, gunicorn's arbiter and uvicorn workers, each on its own SO_REUSEPORT
  socket);
- visiondeck-route: the same with VISIONDECK_FAST_LANE=false (FastAPI's route instead of
  `serve/api/fast_predict.py`);
- visiondeck-uvicorn (two workers): the same app under uvicorn's own workers, which share
  one listening socket (what `serve --workers N` ran before it took gunicorn; the
  connection board that sat in between is gone): uvicorn started directly on the app
  factory with `serve`'s options;
- litserve / litserve-batch: LitServe, `workers_per_device=N`, batching off / on (32
  images, 2 ms: VisionDeck's limits); for Fashion-MNIST also litserve-fq, its ZeroMQ
  transport (`fast_queue=True`, LitServe's advice above 100 requests a second);
- bentoml-batch: BentoML, `workers=N`, adaptive batching (32 images); `--bentoml-plain`
  adds BentoML without batching (slower in every trial here, so not run by default).

Method: one server up at a time. Round r: every contender in turn (the order rotates each
round) is started fresh, answers one request (its top label checked against VisionDeck's),
is warmed up with wrk, then measured with `wrk -t1 -c8 -dSECONDS` on the same upload, and
stopped. The median round per contender is reported (its p50/p99 with it), with every
round's req/s, and ratios against LitServe's best configuration at the same worker count:
of the medians, and per round (so a slow spell of a shared machine, which hits a whole
round, cancels out). Also per round: the server's CPU per request (all its processes,
from /proc; steadier than req/s when other work shares the cores) and, for VisionDeck with
two workers, how wrk's connections were split over the workers (`ss`, a second into the
measurement). Client and servers share the machine's cores.

    .venv/bin/python benchmarks/bench_serve_peers.py --setup   # (re)build benchmarks/.venv-peers
    .venv/bin/python benchmarks/bench_serve_peers.py --quick   # 2 rounds × 3 s, ~5 min
    .venv/bin/python benchmarks/bench_serve_peers.py           # 3 rounds × 6 s, ~10 min

(Durations on a quiet machine; under heavy other load starts slow down and a full run took
16-18 minutes.)

The first run builds the peers' virtualenv (benchmarks/.venv-peers, from
benchmarks/requirements-peers.txt plus this project's core install) and both Bundles (in
--work, default benchmarks/_work/serve-peers, kept for later runs). Results:
benchmarks/results/serve-peers.json and a table on stdout. The peers are benchmark
dependencies only: nothing in the project imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import (  # a sibling script, not a package
    _free_port,
    _load_wrk,
    _wait_http,
    build_effnet_bundle,
    build_fm_bundle,
    multipart_request,
    sample_image,
)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PEERS_DIR = ROOT / "benchmarks" / "peers"
PEERS_VENV = ROOT / "benchmarks" / ".venv-peers"
PEERS_PYTHON = PEERS_VENV / "bin" / "python"
REQUIREMENTS = ROOT / "benchmarks" / "requirements-peers.txt"
CONCURRENCY = 8
#: the issue's goals (issue 18), checked in the summary
GOALS = {"fm_x1_vs_litserve": 1.3, "fm_x2_vs_litserve": 2.0, "effnet_x1_vs_litserve": 1.0,
         "fm_p99_ms": 25.0}


# ------------------------------------------------------------------------ the peers' venv


def setup_peers(force: bool = False) -> None:
    """benchmarks/.venv-peers with the pinned peers and this project's core install."""
    check = [str(PEERS_PYTHON), "-c", "import litserve, bentoml, onnxruntime, visiondeck"]
    if not force and PEERS_PYTHON.exists() and subprocess.run(
            check, capture_output=True).returncode == 0:
        return
    print(f"building {PEERS_VENV} (pip, about a minute)", flush=True)
    if not PEERS_PYTHON.exists():
        subprocess.run([PYTHON, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    subprocess.run([*pip, "-e", str(ROOT)], check=True)  # core dependencies only
    subprocess.run(check, check=True)


# ------------------------------------------------------------------------ contenders


@dataclass
class Contender:
    """One server configuration; `kind` is visiondeck, litserve or bentoml."""

    name: str
    kind: str
    workers: int
    options: dict[str, bool] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    colds: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name}×{self.workers}"

    def command(self, bundle: Path, port: int, threads: int, data_dir: Path
                ) -> tuple[list[str], dict[str, str], str]:
        """(argv, extra environment, readiness path)."""
        if self.kind == "litserve":
            argv = [str(PEERS_PYTHON), str(PEERS_DIR / "litserve_server.py"), str(bundle),
                    "--port", str(port), "--workers", str(self.workers),
                    "--threads", str(threads)]
            if self.options.get("batch"):
                argv.append("--batch")
            if self.options.get("fast_queue"):
                argv.append("--fast-queue")
            return argv, {}, "/health"
        if self.kind == "bentoml":
            argv = [str(PEERS_VENV / "bin" / "bentoml"), "serve", "bentoml_service:Classifier",
                    "--working-dir", str(PEERS_DIR), "--host", "127.0.0.1",
                    "--port", str(port)]
            return argv, {"VDPEER_BUNDLE": str(bundle), "VDPEER_WORKERS": str(self.workers),
                          "VDPEER_THREADS": str(threads),
                          "VDPEER_BATCH": "1" if self.options.get("batch", True) else "0",
                          "BENTOML_HOME": str(data_dir / "bentoml-home")}, "/readyz"
        env = {} if self.options.get("fast_lane", True) else {"VISIONDECK_FAST_LANE": "false"}
        if not self.options.get("uvicorn_workers", False):
            return [PYTHON, "-m", "visiondeck", "serve", str(bundle), "--port", str(port),
                    "--workers", str(self.workers), "--data-dir", str(data_dir),
                    "--log-level", "warning"], env, "/ready"
        # uvicorn's multi-process mode: its workers share one socket
        env.update({"VISIONDECK_BUNDLE": str(bundle), "VISIONDECK_PORT": str(port),
                    "VISIONDECK_WORKERS": str(self.workers), "VISIONDECK_DATA_DIR": str(data_dir),
                    "OPENBLAS_NUM_THREADS": "1"})
        return [PYTHON, "-m", "uvicorn", "visiondeck.serve.app:create_app_from_env", "--factory",
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers),
                "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown",
                "30"], env, "/ready"


def contenders(model: str, workers: list[int], bentoml_plain: bool = False
               ) -> list[Contender]:
    """The configurations measured for a model (see the module's docstring)."""
    out: list[Contender] = []
    for n in workers:
        out.append(Contender("visiondeck", "visiondeck", n))
        if model == "fashion_mnist" and n == 1:
            out.append(Contender("visiondeck-route", "visiondeck", n, {"fast_lane": False}))
        if n > 1:
            out.append(Contender("visiondeck-uvicorn", "visiondeck", n,
                                 {"uvicorn_workers": True}))
        out.append(Contender("litserve", "litserve", n))
        out.append(Contender("litserve-batch", "litserve", n, {"batch": True}))
        if model == "fashion_mnist":  # LitServe's advice for over 100 requests a second
            out.append(Contender("litserve-fq", "litserve", n, {"fast_queue": True}))
        out.append(Contender("bentoml-batch", "bentoml", n))
        if bentoml_plain:
            out.append(Contender("bentoml", "bentoml", n, {"batch": False}))
    return out


# ------------------------------------------------------------------------ running one


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONDECK_", "VDPEER_"))}
    # what `visiondeck serve` gives itself, given to every server alike
    env.update({"OPENBLAS_NUM_THREADS": "1", "BENTOML_DO_NOT_TRACK": "true",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (BentoML starts its workers in sessions of
    their own, so the server's process group does not hold them all)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, queue = set(), [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            if child not in found:
                found.add(child)
                queue.append(child)
    return found


def _stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server (each server stops its own children), then SIGKILL to every
    process it started that is left after 20 s; returns when all of them are gone, so the
    next server measured has the cores to itself."""
    tree = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and (proc.poll() is None or _alive(tree)):
        time.sleep(0.05)
    for pid in [proc.pid, *_alive(tree)] if proc.poll() is None else _alive(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    while _alive(tree):
        time.sleep(0.05)


def _connection_split(port: int) -> list[int] | None:
    """wrk's connections per server process, most first (e.g. [4, 4], or [8] when one
    worker holds them all), counted with `ss` on the server side of the port."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None
    pids = re.findall(r"pid=(\d+)", out.stdout)
    return sorted((pids.count(pid) for pid in set(pids)), reverse=True)


_TICKS = os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a server and every process below it, all threads
    (fields 14 and 15 of /proc/PID/stat). Per request it is far steadier than req/s on a
    shared machine: a server with more runnable processes gets a larger share of busy
    cores, but not a cheaper request."""
    total = 0.0
    for each in (pid, *_descendants(pid)):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def _alive(pids: set[int]) -> list[int]:
    """Those of `pids` still running (zombies excluded: they hold no CPU and no port)."""
    out = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            out.append(pid)
    return out


def _post(port: int, body: bytes, content_type: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    return response.status, response.read()


def _multipart(image: tuple[bytes, str, str]) -> tuple[bytes, str]:
    """(request body, its Content-Type) of the upload as a multipart `image` field."""
    data, filename, content_type = image
    request = multipart_request("127.0.0.1", 0, "/predict", "image", filename, data,
                                content_type)
    head, _, body = request.partition(b"\r\n\r\n")
    found = re.search(rb"Content-Type: (multipart/form-data; boundary=\S+)", head)
    return body, found.group(1).decode()


def _top(answer: bytes) -> tuple[str, float]:
    """(label, probability) from any of the servers' answers."""
    data = json.loads(answer)
    if isinstance(data, list):  # BentoML's batchable API answers a list
        data = data[0]
    if "predicted" in data:
        return data["predicted"], float(data["confidence"])
    return data["label"], float(data["probability"])


def run_one(contender: Contender, bundle: Path, image: tuple[bytes, str, str], threads: int,
            expected: tuple[str, float] | None, args: argparse.Namespace, work: Path,
            round_: int) -> tuple[str, float]:
    """Start, check, warm up, measure, stop; the measurement goes to `contender.rounds`."""
    port = _free_port()
    data_dir = work / "runs" / f"{contender.label}-{round_}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    argv, extra, ready = contender.command(bundle, port, threads, data_dir)
    log_path = work / "logs" / f"{bundle.name}-{contender.label}-{round_}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir,
                                env=_environment(extra), start_new_session=True)
    try:
        try:
            _wait_http(port, ready, proc, timeout=180)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{contender.label} did not start ({exc}); log: {log_path}\n"
                               + log_path.read_text(errors="replace")[-2000:]) from None
        contender.colds.append(time.perf_counter() - started)
        body, multipart_type = _multipart(image)
        status, answer = _post(port, body, multipart_type)
        if status != 200:
            raise RuntimeError(f"{contender.label} answered {status}: {answer[:300]!r}")
        top = _top(answer)
        if expected is not None and (top[0] != expected[0] or abs(top[1] - expected[1]) > 1e-3):
            raise RuntimeError(f"{contender.label} answered {top}, VisionDeck {expected}: "
                               "not the same model and preparation")
        _load_wrk("127.0.0.1", port, body, multipart_type, CONCURRENCY, args.warmup, work)
        split: list[list[int]] = []
        probe = threading.Timer(min(1.0, args.seconds / 2),
                                lambda: split.append(_connection_split(port)))
        cpu, wall = _tree_cpu(proc.pid), time.perf_counter()
        probe.start()
        result = _load_wrk("127.0.0.1", port, body, multipart_type, CONCURRENCY, args.seconds,
                           work)
        cpu, wall = _tree_cpu(proc.pid) - cpu, time.perf_counter() - wall
        probe.join()
        if contender.kind == "visiondeck" and contender.workers > 1:
            result["connections_per_worker"] = split[0] if split else None
        result["server_cpu_ms_per_request"] = round(cpu * 1000 / max(result["requests"], 1), 3)
        result["server_cores_busy"] = round(cpu / wall, 2)
    finally:
        _stop_server(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
    result["round"] = round_ + 1
    contender.rounds.append(result)
    connections = result.get("connections_per_worker")
    print(f"  {contender.label:24s} {result['throughput_rps']:8.1f} req/s  "
          f"p50 {result['p50_ms'] or float('nan'):7.2f} ms  "
          f"p99 {result['p99_ms'] or float('nan'):7.2f} ms  "
          f"CPU {result['server_cpu_ms_per_request']:5.2f} ms/req on "
          f"{result['server_cores_busy']:4.2f} cores  errors {result['errors']}"
          + (f"  connections {'/'.join(map(str, connections))}" if connections else ""),
          flush=True)
    return top


# ------------------------------------------------------------------------ one model


def effnet_image() -> tuple[bytes, str, str]:
    """A real photo (scikit-image's `chelsea`, a cat) resized to 224 px, as a JPEG."""
    from skimage import data as skdata

    buffer = io.BytesIO()
    Image.fromarray(skdata.chelsea()).resize((224, 224), Image.Resampling.BICUBIC).save(
        buffer, "JPEG", quality=90)
    return buffer.getvalue(), "chelsea.jpg", "image/jpeg"


def ort_threads(bundle: Path, workers: int) -> int:
    """The ONNX Runtime intra-op threads `visiondeck serve --workers N` would use for this
    model, asked of its own engine (so the peers get the same)."""
    from visiondeck.serve.inference.engine import load_model
    from visiondeck.serve.settings import ServeSettings

    upper = ServeSettings(bundle=str(bundle), workers=workers).ort_threads
    return load_model(str(bundle), threads=upper, threads_auto=True).threads


def bench_model(name: str, bundle: Path, image: tuple[bytes, str, str], workers: list[int],
                args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pool = contenders(name, workers, args.bentoml_plain)
    if args.select:
        pool = [c for c in pool if c.label in args.select or c.name == "visiondeck"]
    threads = {n: ort_threads(bundle, n) for n in workers}
    print(f"{name}: {bundle} (upload {len(image[0])} bytes; ONNX Runtime threads by workers "
          f"{threads})", flush=True)
    expected: tuple[str, float] | None = None
    for round_ in range(args.rounds):
        print(f" round {round_ + 1} of {args.rounds}", flush=True)
        shift = round_ % len(pool)
        order = pool[shift:] + pool[:shift]
        # the reference answer comes from VisionDeck, so start with it in the first round
        if expected is None:
            order.sort(key=lambda c: c.kind != "visiondeck")
        for contender in order:
            top = run_one(contender, bundle, image, threads[contender.workers], expected, args,
                          work, round_)
            if expected is None and contender.kind == "visiondeck":
                expected = top
    return summarise(pool, threads, image, bundle)


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ranked = sorted(rounds, key=lambda r: r["throughput_rps"])
    return ranked[(len(ranked) - 1) // 2]


def summarise(pool: list[Contender], threads: dict[int, int], image: tuple[bytes, str, str],
              bundle: Path) -> dict[str, Any]:
    """Median round per contender, and ratios against LitServe's best at the same workers."""
    out: dict[str, Any] = {"bundle": str(bundle), "upload_bytes": len(image[0]),
                           "upload": image[1], "ort_threads_by_workers": threads,
                           "by_workers": {}}
    for n in sorted({c.workers for c in pool}):
        group = [c for c in pool if c.workers == n]
        lit = [c for c in group if c.kind == "litserve"]
        best = max(lit, key=lambda c: _median_round(c.rounds)["throughput_rps"], default=None)
        best_rps = _median_round(best.rounds)["throughput_rps"] if best else None
        # CPU per request: the cheapest LitServe configuration is its best
        lit_cpu = min((_cpu_per_request(c) for c in lit), default=None)
        rows = {}
        for c in group:
            median = _median_round(c.rounds)
            rps = [r["throughput_rps"] for r in c.rounds]
            rows[c.name] = {
                "kind": c.kind, "options": c.options,
                "throughput_rps": median["throughput_rps"], "p50_ms": median["p50_ms"],
                "p99_ms": median["p99_ms"], "errors": sum(r["errors"] for r in c.rounds),
                "server_cpu_ms_per_request": _cpu_per_request(c),
                "cpu_vs_litserve_best": _ratio(lit_cpu, _cpu_per_request(c)),
                "server_cores_busy": median["server_cores_busy"],
                "rounds_rps": rps,
                "spread": round((max(rps) - min(rps)) / statistics.median(rps), 3),
                "vs_litserve_best": _ratio(median["throughput_rps"], best_rps),
                "vs_litserve_best_by_round": [
                    _ratio(r["throughput_rps"], max((x["throughput_rps"] for x in
                                                     _round_of(lit, r["round"])), default=None))
                    for r in c.rounds],
                "cold_start_s": round(statistics.median(c.colds), 2),
                "connections_per_worker_by_round": [r.get("connections_per_worker")
                                                    for r in c.rounds],
                "rounds": c.rounds,
            }
        out["by_workers"][str(n)] = {"litserve_best": best.name if best else None,
                                     "contenders": rows}
    return out


def _cpu_per_request(contender: Contender) -> float:
    """Median over rounds of the server's CPU milliseconds per answered request."""
    return round(statistics.median(r["server_cpu_ms_per_request"] for r in contender.rounds), 3)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours and theirs else None


def _round_of(group: list[Contender], round_: int) -> list[dict[str, Any]]:
    return [r for c in group for r in c.rounds if r["round"] == round_]


# ------------------------------------------------------------------------ report


def print_table(models: dict[str, Any]) -> None:
    """Per model and worker count: the medians, the ratios against LitServe's best (req/s,
    and CPU per request: above 1 = cheaper than LitServe's cheapest), and every round."""
    for name, entry in models.items():
        for n, block in entry["by_workers"].items():
            print(f"\n{name}, {n} worker{'s' * (n != '1')} (c={CONCURRENCY}; ratios against "
                  f"{block['litserve_best']}×{n}, LitServe's best here)")
            print(f"  {'server':20s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s} "
                  f"{'×LitServe':>9s} {'by round':16s} {'CPU ms/req':>10s} {'×LitServe':>9s} "
                  f"{'cores':>5s}  req/s by round")
            for label, row in block["contenders"].items():
                rounds = "/".join(f"{x:.2f}" if x else "-"
                                  for x in row["vs_litserve_best_by_round"])
                rps = "/".join(f"{x:.0f}" for x in row["rounds_rps"])
                print(f"  {label:20s} {row['throughput_rps']:7.1f} {row['p50_ms'] or 0:7.2f} "
                      f"{row['p99_ms'] or 0:7.2f} {row['vs_litserve_best'] or 0:8.2f}× "
                      f"{rounds:16s} {row['server_cpu_ms_per_request']:10.2f} "
                      f"{row['cpu_vs_litserve_best'] or 0:8.2f}× "
                      f"{row['server_cores_busy']:5.2f}  {rps}")
            splits = {label: row["connections_per_worker_by_round"]
                      for label, row in block["contenders"].items()
                      if any(row["connections_per_worker_by_round"])}
            if splits:
                print("  wrk's connections per worker, by round: " + "; ".join(
                    f"{label} " + ", ".join("/".join(map(str, x)) if x else "?" for x in rounds)
                    for label, rounds in splits.items()))


def check_goals(models: dict[str, Any]) -> dict[str, Any]:
    """Issue 18's goals against this run's medians (None where a model was not run)."""

    def row(model: str, workers: str, name: str = "visiondeck") -> dict[str, Any] | None:
        return (models.get(model, {}).get("by_workers", {}).get(workers, {})
                .get("contenders", {}).get(name))

    goals: dict[str, Any] = {}
    for key, (model, workers) in {"fm_x1_vs_litserve": ("fashion_mnist", "1"),
                                  "fm_x2_vs_litserve": ("fashion_mnist", "2"),
                                  "effnet_x1_vs_litserve": ("efficientnet_lite0", "1")}.items():
        found = row(model, workers)
        value = found["vs_litserve_best"] if found else None
        goals[key] = {"goal": f">= {GOALS[key]}", "measured": value,
                      "met": None if value is None else value >= GOALS[key]}
    for workers in ("1", "2"):
        found = row("fashion_mnist", workers)
        value = found["p99_ms"] if found else None
        goals[f"fm_x{workers}_p99_ms"] = {"goal": f"< {GOALS['fm_p99_ms']}", "measured": value,
                                          "met": None if value is None
                                          else value < GOALS["fm_p99_ms"]}
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[3:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true",
                        help="(re)install benchmarks/.venv-peers and exit")
    parser.add_argument("--quick", action="store_true",
                        help="2 rounds, 3 s each, 1 s warm-up (a few minutes)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 2)")
    parser.add_argument("--seconds", type=float, help="wrk duration (default 6; quick 3)")
    parser.add_argument("--warmup", type=float, help="wrk warm-up seconds (default 2; quick 1)")
    parser.add_argument("--only", choices=["fashion_mnist", "efficientnet_lite0"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts for Fashion-MNIST (EfficientNet-Lite0: 1)")
    parser.add_argument("--bentoml-plain", action="store_true",
                        help="also BentoML without adaptive batching")
    parser.add_argument("--select", nargs="+", metavar="LABEL",
                        help="only these contenders (e.g. litserve×1 bentoml-batch×1), plus "
                             "visiondeck, whose answer the others are checked against")
    parser.add_argument("--fm-bundle", type=Path)
    parser.add_argument("--effnet-bundle", type=Path)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "serve-peers",
                        help="built Bundles (kept), server logs")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "serve-peers.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    setup_peers(force=args.setup)
    if args.setup:
        return
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 6.0)
    args.warmup = args.warmup or (1.0 if args.quick else 2.0)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)

    models: dict[str, tuple[Path, tuple[bytes, str, str], list[int]]] = {}
    if args.only in (None, "fashion_mnist"):
        bundle = (args.fm_bundle or build_fm_bundle(work)).resolve()
        models["fashion_mnist"] = (bundle, sample_image(bundle), args.workers)
    if args.only in (None, "efficientnet_lite0"):
        bundle = (args.effnet_bundle or build_effnet_bundle(work)).resolve()
        models["efficientnet_lite0"] = (bundle, effnet_image(), [1])

    import onnxruntime

    versions = subprocess.run(
        [str(PEERS_PYTHON), "-c", "import litserve, bentoml, onnxruntime; print(litserve."
         "__version__, bentoml.__version__, onnxruntime.__version__)"],
        check=True, capture_output=True, text=True).stdout.split()
    results: dict[str, Any] = {
        "command": "python benchmarks/bench_serve_peers.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_at_start": list(os.getloadavg())},
        "versions": {"onnxruntime": onnxruntime.__version__, "litserve": versions[0],
                     "bentoml": versions[1], "peers_onnxruntime": versions[2]},
        "method": __doc__.split("\n\n")[3].replace("\n", " "),
        "rounds": args.rounds, "seconds": args.seconds, "warmup_seconds": args.warmup,
        "concurrency": CONCURRENCY,
        "models": {},
    }
    started = time.perf_counter()
    for name, (bundle, image, workers) in models.items():
        results["models"][name] = bench_model(name, bundle, image, workers, args, work)
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["goals"] = check_goals(results["models"])
    print_table(results["models"])
    print("\ngoals (issue 18): " + ", ".join(
        f"{k} {v['measured']} ({v['goal']}: {'met' if v['met'] else 'NOT met'})"
        for k, v in results["goals"].items() if v["measured"] is not None))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({results['wall_seconds']:.0f} s of measuring)")


if __name__ == "__main__":
    main()
