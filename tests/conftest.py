import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist012(tmp_path_factory) -> Path:
    """The embedded MNIST 0/1/2 subset (100 + 100 per class), sharded once per test session."""
    out = tmp_path_factory.mktemp("shards") / "mnist012"
    subprocess.run([sys.executable, "-m", "data_prep", "mnist", "--out", str(out)], check=True, cwd=ROOT,
                   capture_output=True)
    return out
