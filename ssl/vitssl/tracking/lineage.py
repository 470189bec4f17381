"""Where a run came from, in MLflow's own terms: standard source tags, the shards as dataset inputs,
the accelerate environment as params.

Everything here takes an `MlflowClient` and a run id, so it works the same against a SQLite file
and a tracking server, and never needs the fluent API's active run.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vitssl.data.manifest import split_info
from vitssl.data.sources import expand, is_url_list, local_path, source_manifest
from vitssl.redaction import redact_spec
from vitssl.tracking.mlflow_run import git_commit

CONTEXT_TAG = "mlflow.data.context"
DIGEST_CHARS = 16  # MLflow's dataset digest column holds 36 characters; the full sha256 goes in the profile


def source_tags(extra: dict[str, str] | None = None) -> dict[str, str]:
    """MLflow's standard run tags (mlflow.user, mlflow.source.name/type, mlflow.source.git.commit/branch/
    repoURL), resolved from the entry script in sys.argv[0] as `mlflow.start_run` would; when that script
    is not in a git checkout, the commit of the checkout vitssl is imported from."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    tags = resolve_tags(extra or {})
    if MLFLOW_GIT_COMMIT not in tags and (commit := git_commit()) != "unknown":
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags


def split_sha256(manifest: dict, split: str, shard_dir: str | Path) -> str:
    """A content digest of one split: sha256 over its shards' names and sha256s, in manifest order.
    It does not depend on where the shards live, so the same data has the same digest on every machine."""
    shards = split_info(manifest, split, shard_dir)["shards"]
    lines = "".join(f"{s['name']} {s['sha256']}\n" for s in shards)
    return hashlib.sha256(lines.encode()).hexdigest()


def shard_dataset(shard_dir: str | Path, split: str):
    """The `split` of the shards in `shard_dir` as an MLflow dataset entity: the manifest's digest, its
    source and counts (the profile the UI shows)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset

    manifest = source_manifest(shard_dir, [split])
    info = split_info(manifest, split, shard_dir)
    sha = split_sha256(manifest, split, shard_dir)
    profile = {"split": split, "num_samples": info["count"], "per_class": info.get("per_class", {}),
               "num_shards": len(info["shards"]), "classes": manifest.get("classes", []), "sha256": sha,
               "data_source": manifest.get("source", {}), "prep_command": redact_spec(manifest.get("command", ""))}
    meta = MetaDataset(_dataset_source(str(shard_dir)), name=f"{dataset_name(manifest, str(shard_dir))}-{split}",
                       digest=sha[:DIGEST_CHARS])
    d = meta.to_dict()  # the public description of the dataset; MetaDataset has no profile: add the counts
    return Dataset(d["name"], d["digest"], d["source_type"], d["source"], schema=d.get("schema"),
                   profile=json.dumps(profile))


def dataset_name(manifest: dict, spec: str) -> str:
    """The manifest's dataset (``mnist``), or for an index or a URL list the folder the shards are in."""
    name = manifest.get("dataset")
    if name and name not in ("index", "shard URLs"):
        return name
    first = expand(spec)[0] if is_url_list(spec) else spec.rstrip("/") + "/manifest.json"
    if first.startswith("pipe:"):
        return "pipe"
    return Path(urlsplit(first).path).parent.name or "shards"


def _dataset_source(spec: str):
    """MLflow's source for ``data.shards``: a local folder, an http(s)/file URL, or (``pipe:`` commands,
    which MLflow has no type for) a code source tagged with the spec."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    if local_path(spec) is not None and not is_url_list(spec):
        return resolve_dataset_source(str(Path(spec).resolve()))  # a "local" source
    spec = redact_spec(spec)  # a URL's credentials and tokens, a command: never stored
    try:
        return resolve_dataset_source(spec)
    except MlflowException:
        return CodeDatasetSource({"vitssl.data.shards": spec})


def log_shard_inputs(client, run_id: str, shard_dir: str | Path, inputs: list[tuple[str, str]]) -> None:
    """Log each (context, split) pair, e.g. ("training", "train"), as a dataset input of the run."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    datasets = [DatasetInput(shard_dataset(shard_dir, split), [InputTag(CONTEXT_TAG, context)])
                for context, split in inputs]
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=datasets)
            return
        except MlflowException as e:
            # Runs of one experiment starting together (the study's workers) log the same new dataset:
            # the SQL store looks it up, then inserts it, and the later insert breaks the unique key.
            # The call is one transaction, rolled back; by now the dataset exists, so again links it.
            message = str(e).lower()  # SQLite, PostgreSQL and MySQL word it differently, also behind a server
            if attempt == 2 or not any(m in message for m in ("unique constraint", "integrityerror", "duplicate")):
                raise


def accelerate_params(accelerator) -> dict[str, Any]:
    """The launch environment as params: processes, precision, distributed type, DeepSpeed stage."""
    state = accelerator.state
    params = {"accelerate.num_processes": accelerator.num_processes,
              "accelerate.mixed_precision": accelerator.mixed_precision,
              "accelerate.distributed_type": str(accelerator.distributed_type.value),
              "accelerate.device": str(accelerator.device),
              "accelerate.gradient_accumulation_steps": accelerator.gradient_accumulation_steps}
    plugin = getattr(state, "deepspeed_plugin", None)
    if plugin is not None:
        params["accelerate.deepspeed_zero_stage"] = plugin.zero_stage
    return params


def log_run_lineage(tracking_uri: str, run_id: str, accelerator, shard_dir: str | Path,
                    inputs: list[tuple[str, str]]) -> None:
    """A new run's accelerate environment (params) and shards (dataset inputs), from the main process."""
    import mlflow
    from mlflow.entities import Param

    client = mlflow.MlflowClient(tracking_uri)
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in accelerate_params(accelerator).items()])
    log_shard_inputs(client, run_id, shard_dir, inputs)
