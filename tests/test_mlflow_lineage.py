"""The encoder through MLflow and the run's lineage, against a real SQLite tracking store: every URI form
gives back the exact export, every bad one is one error naming it with nothing left behind, the shards
are dataset inputs with the manifest's digest, and the standard source tags are MLflow's."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.entities import LoggedModelStatus

from vitssl.config import load_config
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine.pretrained import PretrainedError, build_encoder, resolve_pretrained
from vitssl.models import encoder_export, encoder_from_export, make_encoder
from vitssl.tracking.encoder_model import log_encoder, model_name
from vitssl.tracking.handoff import HandoffError, fetch_encoder, link_pretrained
from vitssl.tracking.lineage import log_shard_inputs, source_tags
from vitssl.tracking.system_metrics import SystemMetrics

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "configs/mnist012/finetune.yaml"
sys.path.insert(0, str(ROOT / "launch"))
import finetune as finetune_cli  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A pretraining-like run holding a logged, registered encoder, and a run without one."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("lineage", artifact_location=str(root / "artifacts"))
    torch.manual_seed(0)
    export = encoder_export(make_encoder("vit", depth=2)) | {"objective": "mae", "config": {"seed": 0}}
    run = client.create_run(exp, tags=source_tags({"vitssl.stage": "pretrain"}))
    logged = log_encoder(uri, run.info.run_id, export, step=3, register_as="lineage-encoder")
    client.set_registered_model_alias("lineage-encoder", "best", "1")
    empty = client.create_run(exp)
    client.log_text(empty.info.run_id, "not an encoder", "encoder/encoder.pt")
    # The handoff must use the URI it is given: the process-wide one (set by log_encoder) now points elsewhere.
    mlflow.set_tracking_uri(f"sqlite:///{root / 'not-this-store.db'}")
    return {"root": root, "uri": uri, "client": client, "export": export, "run_id": run.info.run_id,
            "logged": logged, "empty": empty.info.run_id}


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_uri_form_downloads_the_exact_export(store):
    s, rid = store, store["run_id"]
    name = s["client"].get_run(rid).info.run_name  # the logged model's name; `encoder` stands for it too
    specs = [rid, f"runs:/{rid}", f"runs:/{rid}/encoder", f"runs:/{rid}/encoder/extra_files/encoder.pt", f"runs:/{rid}/{name}",
             s["logged"].model_uri, "models:/lineage-encoder/1", "models:/lineage-encoder@best",
             "models:/lineage-encoder/best"]
    assert s["logged"].registered_uri == "models:/lineage-encoder/1"
    for spec in specs:
        got = fetch_encoder(spec, s["uri"])
        assert same_weights(got.export["state_dict"], s["export"]["state_dict"]), spec
        assert got.export["model"] == s["export"]["model"] and got.export["objective"] == "mae", spec
        assert (got.run_id, got.model_id, got.experiment) == (rid, s["logged"].model_id, "lineage"), spec
    assert not (s["root"] / "not-this-store.db").exists()


def test_the_logged_model_is_a_loadable_pytorch_model_of_the_encoder(store):
    s = store
    model = s["client"].get_logged_model(s["logged"].model_id)
    run_name = s["client"].get_run(s["run_id"]).info.run_name
    assert (model.name, model.source_run_id, model.status) == (run_name, s["run_id"], LoggedModelStatus.READY)
    outputs = s["client"].get_run(s["run_id"]).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(s["logged"].model_id, 3)]
    loaded = mlflow.pytorch.load_model(model.artifact_location)  # the pt2 graph: no vitssl code needed
    encoder = encoder_from_export(s["export"])
    encoder.load_state_dict(s["export"]["state_dict"])
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(loaded(x), encoder.eval()(x))


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("vitssl-pretrained-*")}


@pytest.mark.parametrize("spec, says", [
    ("runs:/0123456789abcdef0123456789abcdef", "does not exist"),
    ("0123456789abcdef0123456789abcdef", "does not exist"),
    ("runs:/not-a-run", "not an MLflow run id"),
    ("models:/no-such-model/1", "does not exist"),
    ("models:/lineage-encoder/7", "does not exist"),
    ("models:/lineage-encoder@nope", "does not exist"),
    ("models:/m-0123456789abcdef0123456789abcdef", "does not exist"),
])
def test_a_reference_to_nothing_is_one_error_naming_it(store, spec, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = leftovers()
    with pytest.raises(HandoffError) as err:
        fetch_encoder(spec, store["uri"])
    message = str(err.value)
    assert spec in message and says in message and "\n" not in message
    assert list(tmp_path.iterdir()) == [] and leftovers() == before


def test_a_run_without_an_encoder_or_with_a_foreign_file_is_one_error(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s, before = store, leftovers()
    other = s["client"].create_run(s["client"].get_run(s["run_id"]).info.experiment_id).info.run_id
    for spec, says in ((f"runs:/{other}", "has no such artifact"), (f"runs:/{s['empty']}", "not a vitssl encoder")):
        with pytest.raises(HandoffError) as err:
            fetch_encoder(spec, s["uri"])
        assert spec.split("/")[-1] in str(err.value) and says in str(err.value), str(err.value)
    assert list(tmp_path.iterdir()) == [] and leftovers() == before


def test_a_fine_tune_run_links_the_exact_logged_model_it_consumed(store):
    s = store
    handoff = fetch_encoder(f"runs:/{s['run_id']}", s["uri"])
    ft = s["client"].create_run(s["client"].get_run(s["run_id"]).info.experiment_id)
    link_pretrained(s["uri"], ft.info.run_id, handoff)
    run = s["client"].get_run(ft.info.run_id)
    assert run.data.tags["vitssl.pretrained_uri"] == f"runs:/{s['run_id']}/encoder"
    assert run.data.tags["vitssl.pretrained_model_id"] == s["logged"].model_id
    assert [m.model_id for m in run.inputs.model_inputs] == [s["logged"].model_id]


def test_shards_are_dataset_inputs_with_the_manifest_digest(store, mnist012):
    s = store
    run_id = s["client"].create_run(s["client"].get_run(s["run_id"]).info.experiment_id).info.run_id
    log_shard_inputs(s["client"], run_id, mnist012, [("training", "train"), ("evaluation", "test")])
    manifest = json.loads((mnist012 / "manifest.json").read_text())
    inputs = s["client"].get_run(run_id).inputs.dataset_inputs
    by_context = {i.tags[0].value: i.dataset for i in inputs if i.tags[0].key == "mlflow.data.context"}
    assert sorted(by_context) == ["evaluation", "training"]
    for context, split in (("training", "train"), ("evaluation", "test")):
        shards = manifest["splits"][split]["shards"]
        sha = hashlib.sha256("".join(f"{x['name']} {x['sha256']}\n" for x in shards).encode()).hexdigest()
        ds = by_context[context]
        profile = json.loads(ds.profile)
        assert (ds.name, ds.digest, ds.source_type) == (f"mnist-{split}", sha[:16], "local")
        assert json.loads(ds.source)["uri"] == str(mnist012.resolve())
        assert (profile["sha256"], profile["num_samples"]) == (sha, manifest["splits"][split]["count"])
        assert profile["per_class"] == manifest["splits"][split]["per_class"]


def test_runs_starting_together_all_log_the_same_new_dataset(mnist012, tmp_path):
    """The study's workers start runs of one experiment at once: each logs the same new dataset, and
    MLflow's SQL store (look up, then insert) lets the later insert break the unique key."""
    import threading

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    failures = []
    for round_ in range(4):  # the race is lost only sometimes: several fresh experiments
        client = mlflow.MlflowClient(uri)
        exp = client.create_experiment(f"race-{round_}")
        runs = [client.create_run(exp).info.run_id for _ in range(8)]
        barrier = threading.Barrier(len(runs))

        def log(run_id, barrier=barrier):
            own = mlflow.MlflowClient(uri)
            barrier.wait()
            try:
                log_shard_inputs(own, run_id, mnist012, [("training", "train"), ("evaluation", "test")])
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                failures.append(f"{type(e).__name__}: {str(e)[:200]}")

        threads = [threading.Thread(target=log, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        for run_id in runs:
            assert len(client.get_run(run_id).inputs.dataset_inputs) == 2


def test_source_tags_are_mlflows_standard_ones_with_the_git_commit(store):
    tags = store["client"].get_run(store["run_id"]).data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    assert "git_commit" not in tags and tags["vitssl.stage"] == "pretrain"
    if head:  # a source tarball has no git history
        assert tags["mlflow.source.git.commit"] == head


def test_an_encoder_that_does_not_fit_the_fine_tune_config_is_one_error_naming_the_uri(store, mnist012, tmp_path):
    s = store
    spec = f"runs:/{s['run_id']}"
    found = resolve_pretrained(spec, s["uri"])
    base = [f"data.shards={mnist012}", f"finetune.pretrained={spec}", f"run.output_dir={tmp_path / 'out'}"]
    for overrides, says in ((["data.image_size=32", "model.patch_size=8"], "data.image_size 32 is not divisible by "
                                                                           "the patch size 7 of the encoder"),
                            (["model={arch: cnn}"], "holds a vit encoder, the config asks for model.arch cnn")):
        cfg = load_config(FinetuneConfig, FINETUNE, base + overrides)
        with pytest.raises(PretrainedError) as err:
            build_encoder(cfg, found)
        assert f"runs:/{s['run_id']}/encoder" in str(err.value) and says in str(err.value), str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_cli_reports_a_bad_handoff_in_one_line_and_writes_nothing(store, mnist012, tmp_path, capsys):
    s = store
    runs_before = len(s["client"].search_runs([s["client"].get_run(s["run_id"]).info.experiment_id]))
    for spec in ("runs:/0123456789abcdef0123456789abcdef", "models:/lineage-encoder/9", f"runs:/{s['empty']}"):
        code = finetune_cli.main(["--config", str(FINETUNE), f"data.shards={mnist012}", f"run.tracking_uri={s['uri']}",
                                  f"run.output_dir={tmp_path / 'out'}", f"finetune.pretrained={spec}"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith(f"error: finetune.pretrained={spec!r}") and "\n" not in err, err
    assert not (tmp_path / "out").exists()
    assert len(s["client"].search_runs([s["client"].get_run(s["run_id"]).info.experiment_id])) == runs_before


def test_system_metrics_switch_logs_system_metrics_only_when_on(store):
    s = store
    exp = s["client"].get_run(s["run_id"]).info.experiment_id
    for enabled in (True, False):
        run_id = s["client"].create_run(exp).info.run_id
        monitor = SystemMetrics(enabled, s["uri"], interval_s=0.5)
        monitor.start(run_id)
        deadline = time.time() + 30  # the first sample is logged after one interval
        while enabled and time.time() < deadline and not s["client"].get_run(run_id).data.metrics:
            time.sleep(0.5)
        monitor.stop()
        keys = set(s["client"].get_run(run_id).data.metrics)
        assert ("system/cpu_utilization_percentage" in keys) == enabled, keys
        assert all(k.startswith("system/") for k in keys)


def test_a_logged_encoder_takes_its_runs_name_in_characters_mlflow_allows():
    assert model_name("mnist012-mae-s0") == "mnist012-mae-s0"
    assert model_name("lr1.5e-3/a:b") == "lr1-5e-3-a-b"  # MLflow refuses / : . % and quotes in a model's name
    assert model_name(None) == "encoder"
