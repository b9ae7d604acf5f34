"""Where a served prediction's CPU goes: server CPU per request under load, and the app alone.

Two measurements for one Bundle, closed loop at --concurrency:
- `server`: `visiondeck serve` under wrk (Debian package) for --seconds; the CPU time of
  the server's processes (all threads, from /proc/PID/stat, Linux only) divided by the
  requests answered, and how many cores that kept busy;
- `direct`: the ASGI app driven in this process, without sockets or uvicorn (the same
  lifespan, lane, batching, history and monitoring): requests/s, this process's CPU per
  request, the mean batch, and the CPU per request of each thread (the event loop's
  `MainThread`, `visiondeck-infer`, `visiondeck-store-writer`, ...). Against `server`, it
  tells what HTTP handling costs.

    python benchmarks/bench_serve_cpu.py BUNDLE                      # both, one worker
    python benchmarks/bench_serve_cpu.py BUNDLE --workers 2 --only server
    python benchmarks/bench_serve_cpu.py BUNDLE --env VISIONDECK_FAST_LANE=false

The upload is the benchmark image of bench_serve.py (a Fashion-MNIST PNG or a JPEG photo).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `direct` runs the app in this process: give numpy the one OpenBLAS thread that
# `visiondeck serve` gives its server (read when numpy loads, just below)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import (  # a sibling script, not a package
    _free_port,
    _start_visiondeck,
    _stop,
    multipart_request,
    sample_image,
)

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_cpu(stat: str) -> float:
    """User + system CPU seconds from a /proc/.../stat file (fields 14 and 15; the command
    name before them may hold spaces, so count from its closing parenthesis)."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _cpu_seconds(pid: int) -> float:
    """CPU of a process and of its children (uvicorn's workers), all threads included."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    return sum(_stat_cpu(f"/proc/{p}/stat") for p in pids)


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads by Python thread name (pool threads summed
    under their prefix; threads Python did not start, e.g. ONNX Runtime's, as `native`)."""
    import threading

    names = {str(t.native_id): t.name.rsplit("_", 1)[0] for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            cpu = _stat_cpu(f"/proc/self/task/{tid}/stat")
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        name = names.get(tid, "native")
        out[name] = out.get(name, 0.0) + cpu
    return out


def measure_server(bundle: Path, request: bytes, args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="vd-cpu-"))
    head, _, body = request.partition(b"\r\n\r\n")
    content_type = re.search(rb"Content-Type: (multipart/form-data; boundary=\S+)",
                             head).group(1).decode()
    (work / "body.bin").write_bytes(body)
    (work / "post.lua").write_text(
        f'local f = io.open("{work / "body.bin"}", "rb"); wrk.body = f:read("*all"); '
        f'f:close()\nwrk.method = "POST"\nwrk.headers["Content-Type"] = "{content_type}"\n')
    port = _free_port()
    proc, _ = _start_visiondeck(bundle, port, work, ["--workers", str(args.workers)],
                                dict(args.env))
    url = f"http://127.0.0.1:{port}/predict"

    def wrk(seconds: int) -> str:
        return subprocess.run(["wrk", "-t1", f"-c{args.concurrency}", f"-d{seconds}s",
                               "-s", str(work / "post.lua"), url], check=True,
                              capture_output=True, text=True).stdout
    try:
        wrk(3)  # warm-up
        before, started = _cpu_seconds(proc.pid), time.perf_counter()
        out = wrk(args.seconds)
        cpu, wall = _cpu_seconds(proc.pid) - before, time.perf_counter() - started
    finally:
        _stop(proc)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    print(f"server  workers={args.workers} c={args.concurrency}: {requests / wall:8.1f} req/s, "
          f"server CPU {cpu / requests * 1e6:7.0f} µs per request, "
          f"{cpu / wall:4.2f} cores busy")


def measure_direct(bundle: Path, request: bytes, args: argparse.Namespace) -> None:
    os.environ.update(dict(args.env))
    os.environ.setdefault("VISIONDECK_WATCH_INTERVAL_S", "0")
    from visiondeck.serve.app import create_app
    from visiondeck.serve.settings import ServeSettings

    head, _, body = request.partition(b"\r\n\r\n")
    content_type = re.search(rb"Content-Type: (multipart/form-data; boundary=\S+)",
                             head).group(1)
    headers = [(b"host", b"bench"), (b"content-type", content_type),
               (b"content-length", str(len(body)).encode())]
    app = create_app(ServeSettings(bundle=str(bundle),
                                   data_dir=Path(tempfile.mkdtemp(prefix="vd-cpu-"))))
    scope = {"type": "http", "method": "POST", "path": "/predict", "root_path": "",
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1",
             "asgi": {"version": "3.0"}}

    async def one() -> None:
        status: list[int] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        if status != [200]:
            raise RuntimeError(f"the app answered {status}")

    async def run() -> None:
        async with app.router.lifespan_context(app):
            for _ in range(200):
                await one()
            each = max(1, args.requests // args.concurrency)

            async def client() -> None:
                for _ in range(each):
                    await one()

            batches = app.state.services.engine.batcher.batches
            threads = _thread_cpu()
            cpu, started = time.process_time(), time.perf_counter()
            await asyncio.gather(*(client() for _ in range(args.concurrency)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - started
            n = each * args.concurrency
            batches = app.state.services.engine.batcher.batches - batches
            print(f"direct  c={args.concurrency}: {n / wall:8.1f} req/s, "
                  f"process CPU {cpu / n * 1e6:7.0f} µs per request (no sockets, no uvicorn), "
                  f"mean batch {n / max(batches, 1):.2f}")
            after = _thread_cpu()
            for name in sorted(after, key=lambda k: threads.get(k, 0.0) - after[k]):
                spent = after[name] - threads.get(name, 0.0)
                if spent / n >= 1e-6:
                    print(f"  {name:26s} {spent / n * 1e6:7.0f} µs per request")

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--only", choices=["server", "direct"])
    parser.add_argument("--workers", type=int, default=1, help="for `server`")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=8, help="for `server`")
    parser.add_argument("--requests", type=int, default=4000, help="for `direct`")
    parser.add_argument("--env", action="append", default=[], metavar="VISIONDECK_X=V",
                        type=lambda text: tuple(text.split("=", 1)),
                        help="service setting from the environment (repeatable)")
    args = parser.parse_args()
    data, filename, content_type = sample_image(args.bundle)
    request = multipart_request("127.0.0.1", 0, "/predict", "image", filename, data,
                                content_type)
    if args.only in (None, "server"):
        measure_server(args.bundle, request, args)
    if args.only in (None, "direct"):
        measure_direct(args.bundle, request, args)


if __name__ == "__main__":
    main()
