"""Settings for the whole test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One torch thread: the tests' networks are tiny, where a second OpenMP thread mostly spins and waits (and,
    when other processes share the two cores, oversubscription makes steps several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
