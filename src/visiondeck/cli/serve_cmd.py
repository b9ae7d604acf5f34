"""`visiondeck serve BUNDLE_OR_URI` and `visiondeck keys create|list|revoke`."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

keys_app = typer.Typer(help="API keys for the inference service (hashed at rest).",
                       no_args_is_help=True)

_KEYS_FILE = typer.Option("--file", help="key file (default: .visiondeck/api_keys.json, "
                                         "or VISIONDECK_API_KEYS_FILE)")


def serve(
    model: Annotated[str, typer.Argument(help="Bundle folder, or models:/NAME@ALIAS")],
    host: Annotated[str | None, typer.Option(
        help="bind address; 0.0.0.0 to accept other hosts [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [default: 8000]")] = None,
    workers: Annotated[int | None, typer.Option(
        help="worker processes, each loads the model [default: 1]")] = None,
    variant: Annotated[str | None, typer.Option(
        help="fp32 or int8 (when the Bundle has it) [default: fp32]")] = None,
    database_url: Annotated[str | None, typer.Option(
        help="SQLAlchemy URL for prediction history (default: SQLite in --data-dir)")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="SQLite file, history journal, keys, label secret")] = None,
    store: Annotated[bool | None, typer.Option("--store/--no-store",
                                               help="record predictions [default: on]")] = None,
    require_key: Annotated[bool, typer.Option("--require-key", help="predictions need an "
                                              "API key too (admin always does)")] = False,
    rate_limit: Annotated[str | None, typer.Option(help="per API key (anonymous: per client "
                                                   "address), e.g. 600/minute")] = None,
    redis_url: Annotated[str | None, typer.Option(help="share rate limits via Redis")] = None,
    max_batch: Annotated[int | None, typer.Option(help="largest micro-batch")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="batching wait")] = None,
    log_level: Annotated[str, typer.Option(help="server log level")] = "info",
) -> None:
    """Serve a model over HTTP: /predict, /predict/batch, /explain, /docs, /metrics.

    Options left out keep what the environment says (VISIONDECK_HOST, VISIONDECK_PORT, ...,
    as in a container), then the built-in defaults.
    """
    _one_blas_thread()
    from visiondeck.cli._ui import console
    from visiondeck.export.bundle import load_bundle
    from visiondeck.serve.settings import ServeSettings

    if not model.startswith("models:/"):
        load_bundle(model)  # fail fast, with the Bundle's own error, before binding a port
        model = str(Path(model).resolve())
    options = {"bundle": model, "host": host, "port": port, "workers": workers,
               "variant": variant, "database_url": database_url,
               "data_dir": str(data_dir.resolve()) if data_dir else None, "store": store,
               "require_api_key": require_key if require_key else None,
               "rate_limit": rate_limit, "redis_url": redis_url, "max_batch": max_batch,
               "max_wait_ms": max_wait_ms}
    # the workers build their app from the environment (APP_FACTORY), so set it here
    for key, value in options.items():
        if value is not None:
            os.environ[f"VISIONDECK_{key.upper()}"] = str(value)
    settings = ServeSettings()  # validates the combination before starting
    if settings.workers > 1:
        _refuse_a_taken_port(settings.host, settings.port)
    console.print(f"serving [bold]{model}[/] on http://{settings.host}:{settings.port} "
                  f"({settings.workers} worker{'s' if settings.workers > 1 else ''}); "
                  f"docs at /docs", highlight=False)
    if settings.workers == 1:
        import uvicorn

        uvicorn.run(APP_FACTORY, factory=True, host=settings.host, port=settings.port,
                    log_level=log_level, access_log=False, timeout_keep_alive=KEEP_ALIVE_S,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    else:
        _run_workers(settings.host, settings.port, settings.workers, log_level)


#: what every worker serves: the app built from the VISIONDECK_* environment set above
APP_FACTORY = "visiondeck.serve.app:create_app_from_env"
#: how long a stopping server lets the requests in flight finish
GRACEFUL_SHUTDOWN_S = 30
#: how long an idle keep-alive connection stays open (uvicorn's default)
KEEP_ALIVE_S = 5
#: how long gunicorn lets a worker go without a heartbeat before replacing it; the heartbeat
#: comes from the worker's event loop once the app has started, so this also bounds loading
#: and warming the Bundle, which takes tens of seconds on a busy machine at worst
WORKER_TIMEOUT_S = 120


def _run_workers(host: str, port: int, workers: int, log_level: str) -> None:
    """`--workers N`: gunicorn's arbiter with uvicorn workers, each on its own socket.

    uvicorn's own workers share one listening socket, and the first to wake accepts every
    pending connection: a client that opens its keep-alive connections at once (wrk, a
    load balancer's pool) landed 8/0 on two workers in about one start in eight, which
    cost a third of the throughput (`benchmarks/bench_workers.py`). With `reuse_port` each
    gunicorn worker binds its own SO_REUSEPORT socket (since gunicorn 24) and the kernel
    spreads connections over them by a hash of their addresses: 8 connections split 8/0
    with probability 1/128, and nothing in this project balances by hand. The arbiter
    restarts a worker that dies.
    """
    from gunicorn.app.base import BaseApplication
    from gunicorn.util import import_app

    options = {
        "bind": [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"],
        "workers": workers, "worker_class": "uvicorn_worker.UvicornWorker",
        "reuse_port": True, "loglevel": log_level, "accesslog": None,
        "keepalive": KEEP_ALIVE_S, "graceful_timeout": GRACEFUL_SHUTDOWN_S,
        "timeout": WORKER_TIMEOUT_S, "proc_name": "visiondeck serve",
        # gunicornc's socket is one path per user (~/.gunicorn/gunicorn.ctl): a second
        # server, or a test beside this one, would take it over
        "control_socket_disable": True,
    }

    class Workers(BaseApplication):
        def load_config(self) -> None:
            for name, value in options.items():
                self.cfg.set(name, value)

        def load(self) -> Any:  # in each worker, after the fork
            return import_app(f"{APP_FACTORY}()")

    Workers().run()


def _refuse_a_taken_port(host: str, port: int) -> None:
    """Fail when something already listens on host:port (before `_run_workers`).

    A plain bind fails there, as uvicorn's does with one worker, but an SO_REUSEPORT socket
    shares its port with any other SO_REUSEPORT listener of the same user: a second
    `visiondeck serve --workers N` on the same port would start and silently take part of
    the first one's connections. A probe bound with SO_REUSEADDR only (which TIME_WAIT
    leftovers do not block) tells.
    """
    from visiondeck.errors import ConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:  # the address is taken, or not one of this machine's
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}",
                          hint="is another server on that port? choose another with "
                               "--port, or another --host") from exc


#: numpy's BLAS (OpenBLAS in PyPI's wheels) reads its thread count once, when numpy loads
BLAS_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"


def _one_blas_thread() -> None:
    """One OpenBLAS thread for the server and its workers, unless the user chose otherwise.

    The service's numpy work is a few small products per request (an upload's brightness
    and contrast on the event loop, drift projections), and OpenBLAS hands even a
    784-element dot product to its thread pool, whose threads then spin waiting for more
    work: measured with `benchmarks/bench_serve_cpu.py`, 1.1 ms of server CPU per
    Fashion-MNIST prediction with the default two threads on two cores, 0.75 ms with one.
    The server's parallelism comes from requests, workers and ONNX Runtime. The count is
    read when numpy is first imported, so this runs before anything here imports it; the
    workers, started after it, inherit it. (Setting it at run time through OpenBLAS's own
    call did not stop the spinning.)
    """
    os.environ.setdefault(BLAS_THREADS_VARIABLE, "1")


def _ring(file: Path | None):
    from visiondeck.serve.api.auth import KeyRing
    from visiondeck.serve.settings import ServeSettings

    return KeyRing(file or ServeSettings().keys_path)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="who or what the key is for")],
    admin: Annotated[bool, typer.Option("--admin", help="also allow /admin endpoints")] = False,
    rate: Annotated[str | None, typer.Option(help="this key's own rate limit, e.g. 10/s or "
                                             "600/minute (default: the server's)")] = None,
    file: Annotated[Path | None, _KEYS_FILE] = None,
) -> None:
    """Create a key; it is printed once (only its hash is stored)."""
    from visiondeck.cli._ui import console, err_console

    ring = _ring(file)
    entry, key = ring.add(name, ("predict", "admin") if admin else ("predict",), rate)
    limit = f", {entry.rate}" if entry.rate else ""
    err_console.print(f"created key [bold]{entry.id}[/] ({', '.join(entry.scopes)}{limit}) in "
                      f"{ring.path}; store it now, it is not shown again", highlight=False)
    console.print(key, highlight=False, soft_wrap=True)


@keys_app.command("list")
def list_keys(file: Annotated[Path | None, _KEYS_FILE] = None) -> None:
    """List keys (ids, names, scopes; never the keys)."""
    from rich.table import Table

    from visiondeck.cli._ui import console

    table = Table("id", "name", "scopes", "rate", "created", "revoked")
    for entry in _ring(file).list():
        table.add_row(entry.id, entry.name, ", ".join(entry.scopes), entry.rate or "server's",
                      entry.created_at, "yes" if entry.revoked else "")
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="the key's id (see keys list)")],
           file: Annotated[Path | None, _KEYS_FILE] = None) -> None:
    """Revoke a key; running servers notice within a second."""
    from visiondeck.cli._ui import console
    from visiondeck.errors import ConfigError

    if not _ring(file).revoke(key_id):
        raise ConfigError(f"no active key {key_id!r}", hint="see `visiondeck keys list`")
    console.print(f"revoked {key_id}")
