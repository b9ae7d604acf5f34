"""How `visiondeck serve --workers N` spreads connections over its workers, measured.

A client that opens its keep-alive connections at once (wrk, a load balancer's pool, a
browser) lands them on the workers by whatever mechanism the HTTP server uses to accept, and
keeps them there: a worker that gets none idles for the whole run. The candidates all serve
`visiondeck.serve.app:create_app_from_env` with `visiondeck serve`'s defaults (history and
drift monitoring on, OPENBLAS_NUM_THREADS=1, no access log, graceful shutdown 30 s):

- `serve`: `visiondeck serve BUNDLE --workers N` as the command is now: for N > 1 gunicorn's
  arbiter with uvicorn workers and `reuse_port`, so each worker binds its own SO_REUSEPORT
  socket and the kernel spreads connections by a hash of their addresses; for N = 1 uvicorn;
- `board`: `visiondeck serve` from `--board-src`, a source tree that still has the shared-
  memory connection board (serve/connection_board.py, removed in issue 18): uvicorn's
  workers on one shared socket, a busier worker deferring its accepts up to 20 ms;
- `uvicorn`: uvicorn's own workers on one shared listening socket (the first worker to wake
  takes every pending connection);
- `gunicorn`: the `gunicorn` command with the options `serve` gives it (a check that the
  command line and `serve` agree);
- `granian`: Granian (a Rust HTTP server, `pip install granian`) with `--workers N
  --interface asgi`; on Linux each of its workers binds its own SO_REUSEPORT socket too.

Method: every server up at once; R rounds, in each every server (in a rotating order)
takes `wrk -t1 -c8 -dSECONDS` posting a 28 px Fashion-MNIST PNG to /predict. While wrk runs,
`ss -tnp` counts the established connections per worker process (the split), and /proc
gives the server's CPU time per request (all its processes and threads). Ratios against
the first server listed are taken within a round, so a slow spell of a shared machine,
which hits a whole round, cancels out. `--split-trials K` starts wrk K more times per
server (2 s each) only to count the split, which is a draw at every start. On a machine
busy with other work, `--autogroup-nice -10` (root) gives the servers and wrk most of the
CPU: otherwise every server is held to the same share of it and the split hardly matters.

    .venv/bin/python benchmarks/bench_workers.py                          # builds the Bundle
    .venv/bin/python benchmarks/bench_workers.py --fm-bundle BUNDLE --rounds 9 \
        --split-trials 20 --autogroup-nice -10 --board-src OLD/src \
        --servers board:2 serve:2 uvicorn:2 serve:1

Results: benchmarks/results/workers.json and a table on stdout. The helpers (Bundle,
upload, wrk) are benchmarks/bench_serve.py's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import (  # a sibling script, not a package
    _free_port,
    _load_wrk,
    _log,
    _wait_http,
    build_fm_bundle,
    multipart_request,
    sample_image,
)

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
APP = "visiondeck.serve.app:create_app_from_env"
KINDS = ("serve", "board", "uvicorn", "gunicorn", "granian")


def _command(kind: str, workers: int, port: int, bundle: Path, data_dir: Path) -> list[str]:
    """The server's command line; every one binds 127.0.0.1:port and logs warnings only."""
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if kind in ("serve", "board"):
        return [PYTHON, "-m", "visiondeck", "serve", str(bundle), "--data-dir", str(data_dir),
                "--log-level", "warning", *common]
    if kind == "uvicorn":
        return [PYTHON, "-m", "uvicorn", APP, "--factory", "--no-access-log", "--log-level",
                "warning", "--timeout-graceful-shutdown", "30", *common]
    if kind == "gunicorn":
        return [PYTHON, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "--reuse-port",
                "-w", str(workers), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "30",
                "--keep-alive", "5", "--timeout", "120", "--no-control-socket",
                "--log-level", "warning", f"{APP}()"]
    if kind == "granian":
        return [PYTHON, "-m", "granian", "--interface", "asgi", "--factory", "--no-access-log",
                "--log-level", "warning", "--workers-kill-timeout", "30", *common, APP]
    raise ValueError(kind)


class Server:
    def __init__(self, kind: str, workers: int) -> None:
        self.kind, self.workers = kind, workers
        self.label = f"{kind}×{workers}"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.rounds: list[dict[str, Any]] = []
        self.trial_splits: list[str] = []

    def start(self, bundle: Path, work: Path, args: argparse.Namespace) -> None:
        self.port = _free_port()
        data_dir = work / f"data-{self.kind}-{self.workers}"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONDECK_")}
        # what `visiondeck serve` would put in the environment for its workers
        env.update(VISIONDECK_BUNDLE=str(bundle), VISIONDECK_DATA_DIR=str(data_dir),
                   VISIONDECK_WORKERS=str(self.workers), VISIONDECK_WATCH_INTERVAL_S="0",
                   OPENBLAS_NUM_THREADS="1")
        src = args.board_src if self.kind == "board" else args.src
        if src:
            env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            _command(self.kind, self.workers, self.port, bundle, data_dir),
            stdout=_log(data_dir / "server.log"), stderr=subprocess.STDOUT, env=env,
            cwd=data_dir, start_new_session=True)
        _wait_http(self.port, "/ready", self.proc)
        if args.autogroup_nice is not None:
            _prioritize(self.proc.pid, args.autogroup_nice)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to whatever is left after 30 s."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own group
        os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def split(self) -> str:
        """Established connections per worker process, busiest first, e.g. "5/3"."""
        out = subprocess.run(["ss", "-tnpH", "state", "established",
                              f"( sport = :{self.port} )"],
                             capture_output=True, text=True, check=True).stdout
        counts = collections.Counter(re.findall(r"pid=(\d+)", out))
        per_worker = sorted(counts.values(), reverse=True)
        per_worker += [0] * (self.workers - len(per_worker))
        return "/".join(map(str, per_worker))

    def cpu_seconds(self) -> float:
        """CPU time used so far by every process of the server (its session: the supervisor
        and the workers, all their threads)."""
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[3]) == self.proc.pid:  # session id
                ticks += int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def load(self, upload: tuple[bytes, str], concurrency: int, seconds: float,
             work: Path) -> dict[str, Any]:
        """One wrk run, with the split (`ss` at 30, 50 and 70 % of the run; the reading
        with the most connections counts, in case a stall of the machine left some
        unopened at one of them) and the server's CPU per request from /proc (a machine
        shared with other work slows the server but hardly changes what a request costs)."""
        seen: list[str] = []
        timers = [threading.Timer(seconds * at, lambda: seen.append(self.split()))
                  for at in (0.3, 0.5, 0.7)]
        cpu = self.cpu_seconds()
        for timer in timers:
            timer.start()
        try:
            result = _load_wrk("127.0.0.1", self.port, upload[0], upload[1], concurrency,
                               seconds, work)
        finally:
            for timer in timers:
                timer.cancel()
        result["split"] = max(seen, key=lambda split: sum(map(int, split.split("/"))),
                              default=None)
        result["cpu_ms_per_request"] = round(
            (self.cpu_seconds() - cpu) * 1000 / max(result["requests"], 1), 3)
        return result


def _prioritize(pid: int, nice: int) -> None:
    """Give pid's session the niceness `nice`. With autogroup scheduling (Linux's default on
    desktops and on this VM) CPU time is shared between sessions first, whatever a process's
    own nice value; every server here leads a session of its own."""
    Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def _upload(image: tuple[bytes, str, str]) -> tuple[bytes, str]:
    """The multipart body and its Content-Type, as wrk posts them."""
    request = multipart_request("127.0.0.1", 0, "/predict", "image", image[1], image[0],
                                image[2])
    head, _, body = request.partition(b"\r\n\r\n")
    content_type = re.search(rb"Content-Type: (multipart/form-data; boundary=\S+)", head)
    return body, content_type.group(1).decode()


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3)}


def summarize(servers: list[Server]) -> list[dict[str, Any]]:
    """Per server: medians and ranges of req/s and p99, and req/s as a ratio of the first
    server's in the same round."""
    reference = servers[0]
    rows = []
    for server in servers:
        rps = [r["throughput_rps"] for r in server.rounds]
        ratios = [mine["throughput_rps"] / theirs["throughput_rps"]
                  for mine, theirs in zip(server.rounds, reference.rounds, strict=True)]
        splits = [r["split"] for r in server.rounds]
        rows.append({
            "server": server.label, "kind": server.kind, "workers": server.workers,
            "rps": _spread(rps), "ratio_to_" + reference.label: _spread(ratios),
            "p99_ms": _spread([r["p99_ms"] for r in server.rounds if r["p99_ms"] is not None]),
            "cpu_ms_per_request": _spread([r["cpu_ms_per_request"] for r in server.rounds]),
            "errors": sum(r["errors"] for r in server.rounds),
            "round_splits": splits,
            "splits": dict(collections.Counter(splits + server.trial_splits).most_common()),
            "rounds": server.rounds,
        })
    return rows


def print_table(rows: list[dict[str, Any]], reference: str) -> None:
    print(f"\n{'server':12s} {'req/s median (min-max)':>24s} {'÷ ' + reference + ' per round':>26s}"
          f" {'p99 ms':>7s} {'CPU ms/req':>10s}  splits (rounds and trials)")
    for row in rows:
        rps, ratio = row["rps"], row["ratio_to_" + reference]
        splits = ", ".join(f"{k} ×{v}" for k, v in row["splits"].items())
        print(f"{row['server']:12s} {rps['median']:8.0f} ({rps['min']:5.0f}-{rps['max']:5.0f})"
              f"      {ratio['median']:5.2f} ({ratio['min']:4.2f}-{ratio['max']:4.2f})"
              f"  {row['p99_ms']['median']:7.1f} {row['cpu_ms_per_request']['median']:10.3f}"
              f"  {splits}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fm-bundle", type=Path, help="a Fashion-MNIST Bundle (else built)")
    parser.add_argument("--work", type=Path, help="data dirs and a built Bundle (default: temp)")
    parser.add_argument("--servers", nargs="+", default=["serve:2", "uvicorn:2", "serve:1"],
                        help=f"KIND:WORKERS, KIND one of {', '.join(KINDS)}; ratios are "
                             "against the first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--split-trials", type=int, default=0,
                        help="extra 2 s wrk starts per server, to count the split only")
    parser.add_argument("--src", type=Path, help="PYTHONPATH for every server but `board` "
                                                 "(default: the installed visiondeck)")
    parser.add_argument("--board-src", type=Path, help="a src/ folder with "
                                                       "serve/connection_board.py")
    parser.add_argument("--autogroup-nice", type=int, metavar="N",
                        help="on a machine shared with other work: the niceness of the servers'"
                             " sessions and of this script's (and so wrk's), e.g. -10 (root)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/workers.json")
    args = parser.parse_args()
    servers = []
    for spec in args.servers:
        kind, _, workers = spec.partition(":")
        if kind not in KINDS or not workers.isdigit():
            parser.error(f"--servers {spec!r}: expected KIND:WORKERS, KIND in {KINDS}")
        if kind == "board" and not args.board_src:
            parser.error("the `board` server needs --board-src")
        servers.append(Server(kind, int(workers)))

    work = args.work or Path(tempfile.mkdtemp(prefix="vd-bench-workers-"))
    work.mkdir(parents=True, exist_ok=True)
    bundle = args.fm_bundle or build_fm_bundle(work)
    upload = _upload(sample_image(bundle))
    started_load = list(os.getloadavg())
    if args.autogroup_nice is not None:
        _prioritize(os.getpid(), args.autogroup_nice)
    loads: list[list[float]] = []
    try:
        for server in servers:
            server.start(bundle, work, args)
            server.load(upload, args.concurrency, 2, work)  # warm-up
        for round_ in range(args.rounds):
            shift = round_ % len(servers)
            loads.append([round(x, 2) for x in os.getloadavg()])
            print(f" round {round_ + 1} of {args.rounds} (load {loads[-1][0]})", flush=True)
            for server in servers[shift:] + servers[:shift]:
                result = server.load(upload, args.concurrency, args.seconds, work)
                server.rounds.append(result)
                print(f"  {server.label:12s} {result['throughput_rps']:8.1f} req/s  "
                      f"p99 {result['p99_ms'] or float('nan'):7.2f} ms  split {result['split']}"
                      f"  CPU {result['cpu_ms_per_request']:.3f} ms/req"
                      f"  errors {result['errors']}", flush=True)
        for trial in range(args.split_trials):
            for server in servers[trial % len(servers):] + servers[:trial % len(servers)]:
                if server.workers > 1:
                    server.trial_splits.append(server.load(upload, args.concurrency, 2,
                                                           work)["split"])
    finally:
        for server in servers:
            server.stop()

    rows = summarize(servers)
    print_table(rows, servers[0].label)
    results = {
        "command": "python benchmarks/bench_workers.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_at_start": started_load,
                    "load_average_per_round": loads,
                    "load_average_at_end": list(os.getloadavg())},
        "method": f"wrk -t1 -c{args.concurrency} -d{args.seconds:g}s on loopback, all servers "
                  "up at once, rounds in a rotating order; split = established connections "
                  "per worker pid from `ss -tnp` during the run; CPU per request from /proc",
        "autogroup_nice": args.autogroup_nice,
        "bundle": str(bundle), "rounds": args.rounds, "split_trials": args.split_trials,
        "servers": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
