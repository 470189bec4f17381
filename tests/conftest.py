from pathlib import Path

import pytest
import torch

from data_prep.cli import main as data_prep_main

ROOT = Path(__file__).resolve().parents[1]
# The models under test are tiny: one thread is as fast, and more only fight over a loaded machine's
# cores (subprocess launches get --num_cpu_threads_per_process 1 likewise).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist012(tmp_path_factory) -> Path:
    """The embedded MNIST 0/1/2 subset (100 + 100 per class), sharded once per test session."""
    out = tmp_path_factory.mktemp("shards") / "mnist012"
    assert data_prep_main(["mnist", "--out", str(out)]) == 0  # in this process: the fast tier launches none
    return out
