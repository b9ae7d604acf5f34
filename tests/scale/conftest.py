"""A real Ray cluster on loopback for the scale-out tests: a head and one worker node, one
CPU each, in a private temporary folder, shut down (every process it started) at the end.

Ray missing is a failure here, not a skip: `make test` installs it (`visiondeck[ray]` is in
the `dev` extra).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class RayCluster:
    address: str
    env: dict[str, str]  # what a driver subprocess needs to join (RAY_TMPDIR, the marker)
    marker: str

    def processes(self, title: str) -> list[int]:
        """Pids of this cluster's processes whose command line holds `title`."""
        return [pid for pid, cmdline in _marked(self.marker) if title in cmdline]


def _marked(marker: str) -> Iterator[tuple[int, str]]:
    """(pid, command line) of every process that carries `marker` in its environment."""
    needle = f"VISIONDECK_TEST_RAY={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        yield int(entry.name), cmdline


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[RayCluster]:
    base = tempfile.mkdtemp(prefix="vdray", dir="/tmp")  # short: Ray's socket paths
    os.makedirs(os.path.join(base, "ray"))
    marker = uuid.uuid4().hex
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray's single-machine mode, where "127.0.0.1" stays
    # loopback (otherwise a driver rewrites it to the host's address, where nothing listens)
    # RAY_worker_niceness=0: Ray starts its workers at nice 15 so that a busy node's raylet
    # stays responsive; beside other CPU-heavy processes (two other test suites) a niced
    # worker gets almost no CPU, and a 20-second study took 18 minutes
    env = {"RAY_TMPDIR": base, "VISIONDECK_TEST_RAY": marker,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_worker_niceness": "0"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the nodes (and the workers they start) inherit the marker
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={
        **node, "include_dashboard": False, "temp_dir": os.path.join(base, "ray")})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield RayCluster(cluster.address, env, marker)
    finally:
        cluster.shutdown()
        for pid, _ in _marked(marker):  # anything the shutdown missed; ours only
            if pid != os.getpid():
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(base, ignore_errors=True)
