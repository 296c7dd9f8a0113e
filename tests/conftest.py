import os
import sys
from pathlib import Path

# Idle OpenMP threads must sleep, not spin: on a small shared machine a spinning thread can make small
# ops many times slower while anything else runs. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# cuBLAS repeats its results only with a fixed workspace (read when CUDA starts; unused on the CPU)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
# No curves.png or thetas heat map after every epoch of the suite's hundred short runs (0.1-0.4 s each,
# and matplotlib's import in every process); the tests of the pictures turn them back on
# (general_functions/curves.py).
os.environ.setdefault("FBNET_CURVES", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_configure(config):
    torch.set_num_threads(2)


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is faster, and far faster when other jobs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
