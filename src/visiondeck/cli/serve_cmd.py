"""`visiondeck serve BUNDLE_OR_URI` and `visiondeck keys create|list|revoke`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

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
    data_dir: Annotated[Path | None, typer.Option(help="SQLite file, spool and key file")
                        ] = None,
    store: Annotated[bool | None, typer.Option("--store/--no-store",
                                               help="record predictions [default: on]")] = None,
    require_key: Annotated[bool, typer.Option("--require-key", help="predictions need an "
                                              "API key too (admin always does)")] = False,
    rate_limit: Annotated[str | None, typer.Option(help="per API key (anonymous: per client "
                                                   "address), e.g. 600/minute")] = None,
    redis_url: Annotated[str | None, typer.Option(help="share rate limits via Redis")] = None,
    max_batch: Annotated[int | None, typer.Option(help="largest micro-batch")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="batching wait")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve a model over HTTP: /predict, /predict/batch, /explain, /docs, /metrics.

    Options left out keep what the environment says (VISIONDECK_HOST, VISIONDECK_PORT, ...,
    as in a container), then the built-in defaults.
    """
    _one_blas_thread()
    import uvicorn

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
    # the workers build their app from the environment (uvicorn factory), so set it here
    for key, value in options.items():
        if value is not None:
            os.environ[f"VISIONDECK_{key.upper()}"] = str(value)
    settings = ServeSettings()  # validates the combination before starting
    console.print(f"serving [bold]{model}[/] on http://{settings.host}:{settings.port} "
                  f"({settings.workers} worker{'s' if settings.workers > 1 else ''}); "
                  f"docs at /docs", highlight=False)
    with _accept_board(settings.workers) as loop:
        uvicorn.run("visiondeck.serve.app:create_app_from_env", factory=True,
                    host=settings.host, port=settings.port, workers=settings.workers,
                    log_level=log_level, access_log=False, timeout_graceful_shutdown=30,
                    loop=loop)


@contextmanager
def _accept_board(workers: int) -> Iterator[str]:
    """With several workers, a shared connection board and the event loop that balances
    accepted connections over it (`visiondeck.serve.connection_board`); the board file goes when the
    server stops. One worker keeps uvicorn's own loop."""
    if workers <= 1:
        yield "auto"
        return
    from visiondeck.serve.connection_board import BOARD_VARIABLE, ConnectionBoard

    board = ConnectionBoard.create()
    os.environ[BOARD_VARIABLE] = str(board)
    try:
        yield "visiondeck.serve.connection_board:new_balanced_loop"
    finally:
        os.environ.pop(BOARD_VARIABLE, None)
        board.unlink(missing_ok=True)


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
