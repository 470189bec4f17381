"""Where a new user trips: a resume says so in its first line, a resume with another data source or
objective is one error line, experiments open as model training in MLflow 3's UI, dataset inputs
carry the data's name."""
from __future__ import annotations

import json

import mlflow
import pytest
import yaml

from vitssl.config import ConfigError, PretrainConfig, build_config
from vitssl.engine.checkpoint import COMPLETE, CONFIG_FILE, TRAINER_STATE
from vitssl.engine.run import announce_resume, check_resumable
from vitssl.redaction import redacted_dump
from vitssl.tracking.lineage import dataset_name
from vitssl.tracking.mlflow_run import MlflowRun


def _checkpoint(tmp_path, **sections):
    folder = tmp_path / "checkpoint-00000007"
    folder.mkdir()
    cfg = build_config(PretrainConfig, sections)
    (folder / CONFIG_FILE).write_text(yaml.safe_dump(redacted_dump(cfg)))
    (folder / TRAINER_STATE).write_text('{"step": 7}')
    (folder / COMPLETE).write_text("7\n")
    return folder


def test_resuming_another_source_or_objective_is_one_line(tmp_path, capsys):
    folder = _checkpoint(tmp_path, data={"shards": "http://h/d?sig=TOKEN"}, objective={"name": "mae"})
    same = build_config(PretrainConfig, {"data": {"shards": "http://h/d?sig=TOKEN"}, "objective": {"name": "mae"}})
    check_resumable(same, folder)  # compared as stored: redacted on both sides
    other = build_config(PretrainConfig, {"data": {"shards": "pipe:cat x/train-000000.tar"}, "objective": {"name": "mae"}})
    with pytest.raises(ConfigError, match=r"was trained with data.shards='http://h/d\?sig=\*\*\*', this command has "
                                          r"'pipe:\*\*\* \(train-000000.tar\)': start a new run with another run.name"):
        check_resumable(other, folder)
    infonce = build_config(PretrainConfig, {"data": {"shards": "http://h/d?sig=TOKEN"}, "objective": {"name": "infonce"}})
    with pytest.raises(ConfigError, match=r"objective.name='mae', this command has 'infonce'"):
        check_resumable(infonce, folder)
    announce_resume(folder, same)
    assert capsys.readouterr().out == (f"resuming run 'run' from {folder} (step 7); to start fresh instead: "
                                       "run.resume=never or another run.name\n")


def test_experiments_are_tagged_as_model_training(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowRun(True, uri, "fresh").start("r", {})
    client = mlflow.MlflowClient(uri)
    client.create_experiment("older")  # made before the tag existed
    MlflowRun(True, uri, "older").start("r", {})
    for name in ("fresh", "older"):
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"


def test_dataset_inputs_are_named_after_the_data():
    assert dataset_name({"dataset": "mnist"}, "/x/y") == "mnist"
    assert dataset_name({"dataset": "index"}, "/data/mnist012") == "mnist012"
    assert dataset_name({"dataset": "shard URLs"}, "http://h/d/tiny/train-{000000..000002}.tar") == "tiny"


def test_run_names_repeat_no_suffix():
    from vitssl.engine.run import run_name_with

    assert run_name_with("ft-knn", "mae", "knn", "s0") == "ft-knn-mae-s0"
    assert run_name_with("mae-s0-knn", "mae", "knn", "s0") == "mae-s0-knn"
    assert run_name_with("run", "mae", "finetune", "s1") == "run-mae-finetune-s1"


@pytest.mark.slow
def test_plain_accelerate_launch_after_make_setup_does_not_warn_about_the_process_count(tmp_path):
    """`make setup` writes accelerate's default config; plain `accelerate launch`, as the README runs it,
    then takes its process count from it (without one it warns: `--num_processes` set to 0)."""
    import subprocess

    from launching import ACCELERATE, ROOT, env

    recipe = (ROOT / "Makefile").read_text().split("$(STAMP): ", 1)[1].split("\n\n", 1)[0]
    step = next(line.split() for line in recipe.splitlines() if "accelerate config default" in line)
    home = dict(env(), HF_HOME=str(tmp_path / "hf"))  # no default config yet, as on a new machine
    written = subprocess.run([ACCELERATE, *step[1:]], env=home, capture_output=True, text=True, timeout=120)
    assert written.returncode == 0 and (tmp_path / "hf/accelerate/default_config.yaml").is_file(), written.stderr
    (tmp_path / "script.py").write_text("print('ran')\n")
    after = subprocess.run([ACCELERATE, "launch", str(tmp_path / "script.py")], env=home, capture_output=True,
                           text=True, timeout=120)
    assert after.returncode == 0 and after.stdout.strip() == "ran", after.stderr
    assert "--num_processes" not in after.stderr, after.stderr


def test_study_stage_run_names_carry_each_part_once(tmp_path):
    """The names the study's fine-tune, linear and kNN stages get in MLflow: the stage's own name
    (``mae-s0-knn``, ``scratch-s0-finetune``, ``mae-extra-s0-linear``), nothing repeated, nothing added."""
    from vitssl.config import load_config
    from vitssl.config.finetune import FinetuneConfig
    from vitssl.engine.finetune import finetune_run_name
    from vitssl.study import stages
    from vitssl.study.plan import StudyOptions, build_jobs

    shard = {"name": "train-000000.tar", "count": 300, "bytes": 1, "sha256": "0" * 64}  # counts are all it reads
    splits = {split: {"count": 300, "shards": [shard | {"name": f"{split}-000000.tar"}]}
              for split in ("train", "test", "unlabeled")}
    (tmp_path / "manifest.json").write_text(json.dumps({"splits": splits}))
    opts = StudyOptions(objectives=["scratch", "mae"], seeds=[0, 1], shards=str(tmp_path), out=str(tmp_path),
                        extra_data=True, pixel_baselines=False)
    jobs = build_jobs(opts, tmp_path, [f"data.shards={tmp_path}"], ["test"], "sqlite:///x.db", "parent")
    names = []
    for job in jobs:
        if job.fn is not stages.finetune:
            continue  # a pretraining: run.name is the stage's tag as given
        cfg = load_config(FinetuneConfig, job.kwargs["config"], job.kwargs["overrides"])
        objective = job.name.split("-")[0]  # what the encoder's export says for the study's own pretrainings
        names.append(finetune_run_name(cfg, "none" if objective == "scratch" else objective))
    assert len(names) == 2 * (1 + 2) * 3  # seeds x (scratch, mae, mae on extra data) x modes
    assert "mae-s0-knn" in names and "scratch-s1-finetune" in names and "mae-extra-s0-linear" in names
    assert all(len(name.split("-")) == len(set(name.split("-"))) for name in names), names
    assert len(set(names)) == len(names)
