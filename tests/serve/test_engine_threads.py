"""The decode threads run niced, the event loop does not: under a flood of big uploads the
loop (health checks, answers) is scheduled first."""

from __future__ import annotations

import os
import threading

import pytest


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread nice is Linux's")
@pytest.mark.parametrize("nice", [10, 0])
def test_decode_threads_are_niced_and_the_loop_is_not(make_client, nice) -> None:
    client = make_client(decode_nice=nice)
    engine = client.app.state.services.engine

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    loop_priority = os.getpriority(os.PRIO_PROCESS, 0)
    decode = [engine._decode_pool.submit(priority).result(timeout=30) for _ in range(4)]
    assert decode == [max(nice, loop_priority)] * 4
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_priority
    assert client.get("/health").status_code == 200
