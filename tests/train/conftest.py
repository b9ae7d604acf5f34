"""Fixtures shared by the training tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Intra-op threads only fight over a shared 2-core machine for models this small.

    Not autouse: a module asks for it with `pytestmark = pytest.mark.usefixtures(...)`.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
