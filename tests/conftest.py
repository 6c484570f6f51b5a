"""Shared fixtures; plain helper functions and constants are in helpers.py."""

import pytest
import torch

from hub_server import HubServer


@pytest.fixture
def hub(tmp_path):
    """A loopback Hub (tests/hub_server.py) for one test; at the end it must have known every route it was asked."""
    with HubServer(tmp_path / "hub") as server:
        yield server
        assert server.unknown_requests == [], f"routes the server does not know: {server.unknown_requests}"


@pytest.fixture(scope="module")
def one_torch_thread():
    """In-process sampling of a module on one intra-op thread (as helpers.THREADS does for subprocesses): these
    models are tiny, and on a busy machine torch's thread pool makes the first forward pass take many seconds
    instead of a fraction of one. Restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
