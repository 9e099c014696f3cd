"""Fixtures of the training tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread, as the training subprocesses have (OMP_NUM_THREADS=1): the same
    arithmetic, and on a shared 2-core machine two threads run ~5x slower here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
