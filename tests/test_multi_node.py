"""Two nodes on one machine: two `accelerate launch --num_machines 2 --machine_rank r` launchers
(one CPU process each, gloo over loopback). A shared run folder survives SIGTERM to both launchers
and resumes to the weights of an uninterrupted run; node-local folders are refused at start."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from vitssl.engine.checkpoint import latest_checkpoint

from launching import ACCELERATE, ROOT, env, free_port

pytestmark = pytest.mark.slow
MAE = str(ROOT / "configs/mnist012/mae.yaml")


def node_cmd(rank: int, port: int, overrides: list[str]) -> list[str]:
    return [ACCELERATE, "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
            "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_cpu_threads_per_process", "1",
            str(ROOT / "launch/pretrain.py"), "--config", MAE, *overrides]


def start_nodes(cwds: list[Path], overrides: list[str]) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank, cwd in enumerate(cwds):
        cwd.mkdir(parents=True, exist_ok=True)
        log = open(cwd / f"node{rank}.log", "a")
        procs.append(subprocess.Popen(node_cmd(rank, port, overrides), cwd=cwd, env=env(), stdout=log,
                                      stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float = 400) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(latest_checkpoint(run_dir) / "encoder.pt", weights_only=True)["state_dict"]


def common(shards: Path, tmp_path: Path, out: str) -> list[str]:
    return [f"data.shards={shards}", f"run.output_dir={out}", f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "data.batch_size=8", "run.max_steps=30", "run.checkpoint_every=5", "run.log_every=5",
            "run.figure_every=0", "model.dropout=0.1"]


def test_shared_folder_survives_sigterm_to_both_launchers(mnist012, tmp_path):
    full = tmp_path / "full"
    assert wait_all(start_nodes([tmp_path / "n0", tmp_path / "n1"], common(mnist012, tmp_path, str(full)))) == [0, 0]

    cut = tmp_path / "cut"
    args = common(mnist012, tmp_path, str(cut))
    procs = start_nodes([tmp_path / "c0", tmp_path / "c1"], args)
    deadline = time.time() + 300
    while not (cut / "checkpoint-00000010").exists():
        assert all(p.poll() is None for p in procs) and time.time() < deadline
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    wait_all(procs)
    stopped = latest_checkpoint(cut)
    assert int(stopped.name.split("-")[1]) < 30, "the run ended before the signal"
    assert sorted(f.name for f in stopped.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                           "random_states_1.pkl"]

    assert wait_all(start_nodes([tmp_path / "c0", tmp_path / "c1"], args)) == [0, 0]
    assert "resumed from" in (tmp_path / "c0" / "node0.log").read_text()
    assert latest_checkpoint(cut).name == latest_checkpoint(full).name
    a, b = weights(full), weights(cut)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_node_local_folders_are_refused_at_start_in_one_line(mnist012, tmp_path):
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    codes = wait_all(start_nodes(nodes, common(mnist012, tmp_path, "runs/x")))  # relative: one folder per node
    assert all(c != 0 for c in codes), codes
    for rank, node in enumerate(nodes):
        log = (node / f"node{rank}.log").read_text()
        errors = [ln for ln in log.splitlines() if ln.startswith("error: ")]
        assert errors == ["error: run.output_dir runs/x is not shared between the nodes (process 1 does not see "
                          "node 0's files there): put it on a filesystem every node mounts at the same path"], log[-3000:]
        assert not (node / "runs/x").exists() or not any((node / "runs/x").iterdir())
