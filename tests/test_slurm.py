"""SLURM for real: a one-host cluster of two nodes (tests/slurm_cluster.py) runs launch/slurm.py's
training jobs and launch/study.py's stage jobs. The unit tests of the node place need no cluster."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vitssl.engine.checkpoint import latest_checkpoint
from vitssl.slurm.place import PORT_BASE, Place, SlurmEnvError, expand_nodelist, place_from_env
from vitssl.slurm.train_job import TrainJob

from launching import ROOT, client, env, launch
from slurm_cluster import slurm  # noqa: F401  (the session fixture)

MAE = "configs/mnist012/mae.yaml"
NODELISTS = {
    "gpu[01-04,07]": ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"],
    "a1,b2": ["a1", "b2"],
    "n[1-3]-ib": ["n1-ib", "n2-ib", "n3-ib"],
    "r[1-2]n[01-02]": ["r1n01", "r1n02", "r2n01", "r2n02"],
    "gpu[098-101],cpu7": ["gpu098", "gpu099", "gpu100", "gpu101", "cpu7"],
    "node7": ["node7"],
    "x[3],y[10-11]": ["x3", "y10", "y11"],
}


@pytest.mark.parametrize("nodelist", sorted(NODELISTS))
def test_node_lists_expand_in_order(nodelist):
    assert expand_nodelist(nodelist) == NODELISTS[nodelist]


@pytest.mark.parametrize("bad", ["gpu[01-", "gpu[4-2]", "a]", "gpu[a-b]"])
def test_malformed_node_lists_are_refused(bad):
    with pytest.raises(SlurmEnvError):
        expand_nodelist(bad)


def test_place_of_each_node_from_slurm_environment():
    common = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2"}
    places = [place_from_env(common | {"SLURM_NODEID": str(r)}, 8, resolve=lambda n: f"{n}.ib") for r in (0, 1)]
    assert places == [Place(2, r, "gpu07.ib", PORT_BASE + 4242, 16) for r in (0, 1)]
    args = places[1].accelerate_args()
    assert args[args.index("--machine_rank") + 1] == "1" and args[args.index("--num_processes") + 1] == "16"
    assert place_from_env({}, 2) == Place(1, 0, "127.0.0.1", PORT_BASE, 2)  # outside SLURM: this machine


def test_one_task_per_node_is_required():
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "a[1-2]", "SLURM_NTASKS": "4", "SLURM_NODEID": "0"}
    with pytest.raises(SlurmEnvError, match="--ntasks-per-node=1"):
        place_from_env(env, 1)


def test_requeues_are_bounded():
    job = TrainJob("l.py", "p.py", "c.yaml", [], 1, 0, 1, max_requeues=2, accelerate_config=None, requeues=1)
    again = job.checkpoint()
    assert again is not None and again.function.requeues == 2
    assert again.function.checkpoint() is None  # the third preemption ends the job


# ---- against the one-host cluster -------------------------------------------------------------------

def overrides(shards, out: Path, db: Path, steps: int = 40) -> list[str]:
    return [f"data.shards={shards}", f"run.output_dir={out}", f"run.tracking_uri=sqlite:///{db}", "data.batch_size=8",
            f"run.max_steps={steps}", "run.checkpoint_every=5", "run.log_every=5", "run.figure_every=0"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(latest_checkpoint(run_dir) / "encoder.pt", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    assert latest_checkpoint(a).name == latest_checkpoint(b).name
    wa, wb = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)


def submit(cluster, args: list[str], tmp_path: Path, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """launch/slurm.py ... --wait; wait=False: started, not waited for."""
    cmd = [sys.executable, str(ROOT / "launch/slurm.py"), *args, "--wait"]
    e = env() | {"SLURM_CONF": str(cluster.conf)}
    if wait:
        return subprocess.run(cmd, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(cmd, cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def only_run(db: Path):
    c = client(db.parent)
    [run] = c.search_runs([c.get_experiment_by_name("mnist012").experiment_id])
    return run


@pytest.fixture(scope="module")
def local_two_process_run(mnist012, tmp_path_factory) -> Path:
    """The reference: `accelerate launch` of two processes on this machine."""
    tmp = tmp_path_factory.mktemp("local")
    launch("pretrain.py", MAE, overrides(mnist012, tmp / "run", tmp / "mlflow.db"), tmp, nproc=2)
    return tmp / "run"


@pytest.mark.slow
def test_scontrol_expands_node_lists_as_we_do(slurm):  # noqa: F811
    compared = []
    for nodelist, hosts in NODELISTS.items():
        out = slurm.run("scontrol", "show", "hostnames", nodelist, check=False)
        if out.returncode == 0 and "Invalid" not in out.stderr:  # some versions refuse a suffix after the brackets (n[1-3]-ib); newer take it
            assert out.stdout.split() == hosts == expand_nodelist(nodelist)
            compared.append(nodelist)
    assert len(compared) >= len(NODELISTS) - 1, compared


@pytest.mark.slow
def test_two_node_job_ends_finished_with_the_weights_of_the_local_run(slurm, mnist012, local_two_process_run,  # noqa: F811
                                                                      tmp_path):
    slurm.wait_idle()
    out = submit(slurm, ["pretrain", "--config", str(ROOT / MAE), "--nodes", "2",
                         *overrides(mnist012, tmp_path / "run", tmp_path / "mlflow.db")], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"job \d+ COMPLETED: \{'exit_code': 0, 'requeues': 0\}", out.stdout), out.stdout
    logs = sorted(p.name for p in (tmp_path / "run" / "slurm").glob("*_log.out"))
    assert len(logs) == 2, logs  # one task per node, their logs in the run folder
    assert "--machine_rank 1" in (tmp_path / "run" / "slurm" / logs[1]).read_text()
    assert only_run(tmp_path / "mlflow.db").info.status == "FINISHED"
    assert_same_weights(tmp_path / "run", local_two_process_run)


@pytest.mark.slow
def test_pre_timeout_signal_checkpoints_requeues_and_resumes_exactly(slurm, mnist012, local_two_process_run,  # noqa: F811
                                                                     tmp_path):
    slurm.wait_idle()
    run = tmp_path / "run"
    proc = submit(slurm, ["pretrain", "--config", str(ROOT / MAE), "--nodes", "2", "--max-requeues", "2",
                          *overrides(mnist012, run, tmp_path / "mlflow.db")], tmp_path, wait=False)
    first = proc.stdout.readline()
    job_id = re.match(r"job (\d+):", first).group(1)
    deadline = time.monotonic() + 300
    while not (run / "checkpoint-00000005").exists():
        assert proc.poll() is None and time.monotonic() < deadline, first + proc.stdout.read()
        time.sleep(0.05)
    # What SLURM sends --signal-before seconds before the time limit (and on preemption with a grace time)
    slurm.run("scancel", "--signal=USR2", job_id)
    rest = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, first + rest
    assert f"job {job_id} COMPLETED: {{'exit_code': 0, 'requeues': 1}}" in rest
    log = (run / "slurm" / f"{job_id}_0_log.out").read_text()
    stopped = re.search(r"stop requested: saving a checkpoint at step (\d+)", log)
    assert stopped and int(stopped.group(1)) < 40, log[-3000:]
    assert "resumed from" in log and "Requeued job" in log
    record = only_run(tmp_path / "mlflow.db")  # one MLflow run, resumed after the requeue
    assert record.info.status == "FINISHED"
    assert_same_weights(run, local_two_process_run)


@pytest.mark.slow
def test_a_failing_trainer_fails_the_job_without_a_requeue(slurm, tmp_path):  # noqa: F811
    slurm.wait_idle()
    out = submit(slurm, ["pretrain", "--config", str(ROOT / MAE),
                         *overrides(tmp_path / "no-shards", tmp_path / "run", tmp_path / "mlflow.db")], tmp_path)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "the trainer exited with 2; not requeued" in out.stderr
    job_id = re.search(r"job (\d+):", out.stdout).group(1)
    assert "Restarts=0" in slurm.run("scontrol", "show", "job", job_id).stdout


@pytest.mark.slow
def test_bad_config_is_refused_before_submitting(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "launch/slurm.py"), "pretrain", "--config", str(ROOT / MAE),
                          "optim.nope=1", "--executor", "local"], cwd=tmp_path, env=env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "optim.nope" in out.stderr, out.stderr
    assert not list(tmp_path.rglob("*submission*"))


def study_cmd(shards: str, out: Path, db: Path, objectives: list[str], modes: list[str],
              pretrain_steps: int = 5) -> list[str]:
    return [sys.executable, str(ROOT / "launch/study.py"), "--executor", "slurm", "--objectives", *objectives,
            "--modes", *modes, "--no-pixel-baselines", "--shards", shards, "--out", str(out),
            "--tracking-uri", f"sqlite:///{db}", "--experiment", "slurm-study",
            "--pretrain-override", f"run.max_steps={pretrain_steps}", "--finetune-override", "run.max_steps=5",
            "--finetune-override", "finetune.tsne=false", "--finetune-override", "finetune.linear_steps=5"]


@pytest.fixture(scope="module")
def study_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "mnist012"
    subprocess.run([sys.executable, "-m", "data_prep", "mnist", "--val-per-class", "10", "--out", str(out)],
                   check=True, cwd=ROOT, capture_output=True)
    return out


@pytest.mark.slow
def test_study_on_slurm_over_http_shards_then_a_rerun_skips_it_all(slurm, study_shards, tmp_path):  # noqa: F811
    from http_shards import http_server

    slurm.wait_idle()
    e = env() | {"SLURM_CONF": str(slurm.conf)}
    with http_server(study_shards.parent) as url:
        cmd = study_cmd(f"{url}/mnist012", tmp_path / "study", tmp_path / "mlflow.db", ["mae"], ["finetune", "linear"])
        out = subprocess.run(cmd, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        ids = dict(re.findall(r"\[mae-s0 (\w+)\] job (\d+)", out.stdout))
        assert sorted(ids) == ["finetune", "linear", "pretrain"], out.stdout
        for mode in ("finetune", "linear"):
            script = (tmp_path / "study" / "slurm" / f"{ids[mode]}_submission.sh").read_text()
            assert f"--dependency=afterok:{ids['pretrain']}" in script and "--kill-on-invalid-dep=yes" in script
        assert "| mae |" in out.stdout and "SLURM jobs" in out.stdout  # the table, printed at the end
        c = client(tmp_path)
        runs = c.search_runs([c.get_experiment_by_name("slurm-study").experiment_id])
        assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4  # the study and its 3 stages
        again = subprocess.run(cmd, cwd=tmp_path, env=e, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 stages as SLURM jobs" in again.stdout and "pretrain already finished" in again.stdout


@pytest.mark.slow
def test_cancelling_a_stage_cancels_its_dependents_only(slurm, study_shards, tmp_path):  # noqa: F811
    slurm.wait_idle()
    cmd = study_cmd(str(study_shards), tmp_path / "study", tmp_path / "mlflow.db", ["scratch", "mae"], ["linear"],
                    pretrain_steps=100000)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env() | {"SLURM_CONF": str(slurm.conf)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if match := re.match(r"\[mae-s0 pretrain\] job (\d+)", line):
            slurm.run("scancel", match.group(1))
            break
    rest = proc.stdout.read()
    text = "".join(lines) + rest
    assert proc.wait(timeout=600) == 1, text
    assert "[mae-s0 linear] SKIPPED" in text and "[scratch-s0 linear]" in text, text
    assert (tmp_path / "study" / "runs" / "scratch-s0-linear" / "eval_metrics.json").is_file()
    assert not (tmp_path / "study" / "runs" / "mae-s0-linear" / "eval_metrics.json").exists()
    assert "mae-s0 pretrain: failed CANCELLED" in text


@pytest.mark.slow
def test_study_plan_reads_http_shards(study_shards):
    from vitssl.study import stages
    from vitssl.study.plan import class_names, eval_splits, seeds_protocol

    from http_shards import http_server

    with http_server(study_shards.parent) as url:
        shards = f"{url}/mnist012"
        assert eval_splits(shards) == ["test", "val"]
        assert stages.split_count(shards, "val") == 30 and stages.split_count(shards, "train") > 0
        assert class_names(shards) == ["0", "1", "2"] and seeds_protocol(shards) is (
            seeds_protocol(str(study_shards)))
