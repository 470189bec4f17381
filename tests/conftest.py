import os

# Before anything imports mlflow: its telemetry thread, failing to reach the internet, unsets an
# environment variable while requests iterates os.environ in another thread ("dictionary changed
# size" / KeyError '_MLFLOW_TELEMETRY_SESSION_ID' in a client call). Tests never send telemetry.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

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


def pytest_collection_modifyitems(config, items):
    """The slow tests first: under pytest-xdist (`make test`) the workers then end together instead
    of one of them running the last long test alone. The sort is stable: file order stays within each tier."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
