from pathlib import Path

import pytest

from data_prep.cli import main as data_prep_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist012(tmp_path_factory) -> Path:
    """The embedded MNIST 0/1/2 subset (100 + 100 per class), sharded once per test session."""
    out = tmp_path_factory.mktemp("shards") / "mnist012"
    assert data_prep_main(["mnist", "--out", str(out)]) == 0  # in this process: the fast tier launches none
    return out
