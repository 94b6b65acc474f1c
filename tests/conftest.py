from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny convolutions single-threaded (faster and deterministic here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny experiment (helpers.TINY), run once per session: (root, cases.csv, result).

    Tests that write into the run beyond what ``run_experiment`` does should work on a copy.
    """
    from helpers import TINY
    from lesionuq.data.phantom import make_phantom_dataset
    from lesionuq.experiment import run_experiment

    root = tmp_path_factory.mktemp("exp")
    csv = make_phantom_dataset(root / "data", TINY.phantom, progress=False)
    result = run_experiment(csv, root / "run", TINY, progress=False)
    return root, csv, result
