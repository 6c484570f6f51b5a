"""Shared fixtures; plain helper functions and constants are in helpers.py."""

import os
import shutil

import pytest
import torch

from helpers import TINY_RUN, made_once, run_train
from hub_server import HubServer


def pytest_configure(config):
    """A pytest-xdist worker (`make test` runs one per core) computes on one thread, and so do the processes it
    starts: two workers of two threads each on two cores would make each wait on the other's spinning threads."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def ddpm_hf_cache(tmp_path_factory):
    """DDPM_HF_CACHE of this test process, set for it and every process it starts: tests never read or write the
    user's ~/.cache/ddpm_hf (a classifier or reference statistics cached there by another version would be used)."""
    cache = tmp_path_factory.getbasetemp() / "ddpm_hf_cache"
    cache.mkdir(exist_ok=True)
    os.environ["DDPM_HF_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def digits_classifier():
    """The digits classifier the package ships (ddpm_hf.evaluation.digits; test_digits_metric tests that it is what
    its recipe trains)."""
    from ddpm_hf.evaluation.digits import load_digits_classifier

    return load_digits_classifier()


@pytest.fixture(scope="session")
def mnist_classifier():
    """The MNIST classifier the package ships (ddpm_hf.evaluation.mnist; test_mnist tests its recorded accuracy)."""
    from ddpm_hf.evaluation.mnist import load_mnist_classifier

    return load_mnist_classifier()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The folder of one tiny finished training run (helpers.TINY_RUN: `python scripts/train.py` in a fresh
    interpreter, as a user starts it), trained once per session (``made_once``). Read it only; a test that writes in
    a run takes ``run_copy``."""
    folder = made_once(tmp_path_factory, "trained_run",
                       lambda folder: run_train("--output_dir", str(folder / "run"), *TINY_RUN, cwd=folder, fresh=True))
    return folder / "run"


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of ``trained_run`` of this test's own, at tmp_path/run."""
    return shutil.copytree(trained_run, tmp_path / "run", symlinks=True)


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
