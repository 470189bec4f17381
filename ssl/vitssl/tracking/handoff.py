"""`finetune.pretrained` as an MLflow URI -> the encoder export it names.

Everything goes through the tracking server's API and `mlflow.artifacts.download_artifacts`, never
through a local path recorded in a tag, so pretraining and fine-tuning may run on machines that
share nothing but the tracking URL (with a server that proxies artifacts: `--artifacts-destination`).

    runs:/<run_id>             the same as runs:/<run_id>/encoder
    runs:/<run_id>/encoder     the run's model named `encoder`, else its newest vitssl encoder (named after the run)
    runs:/<run_id>/<path>      a model or artifact path of that run: a folder holding encoder.pt, or the file
    <run_id>                   the same as runs:/<run_id>
    models:/<name>/<version>   a registered version; models:/<name>@<alias> (or /<alias>) an alias
    models:/<model_id>         a logged model (m-...)

The download goes to a temporary folder that is removed once the export is in memory: a bad
handoff writes nothing, and each process of a multi-process job fetches its own copy.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from vitssl.config import ConfigError
from vitssl.messages import first_line
from vitssl.tracking.encoder_model import EXPORT_FILE, EXPORT_IN_MODEL, MODEL_NAME, MODEL_TYPE

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
PRETRAINED_URI_TAG = "vitssl.pretrained_uri"
PRETRAINED_MODEL_TAG = "vitssl.pretrained_model_id"


class HandoffError(ConfigError):
    """An MLflow URI that does not lead to a usable encoder export; the message names the URI."""


@dataclass(frozen=True)
class Handoff:
    uri: str  # the exact URI the export was downloaded from
    export: dict  # arch, args, state_dict, objective, config
    run_id: str | None  # the pretraining run
    model_id: str | None  # the logged model, when the URI named one
    experiment: str | None  # the pretraining run's experiment name


def is_mlflow_reference(spec: str) -> bool:
    return spec.startswith(("runs:/", "models:/")) or bool(RUN_ID.match(spec))


def normalise(spec: str) -> str:
    """The download URI `spec` stands for (see the module docstring)."""
    if RUN_ID.match(spec):
        return f"runs:/{spec}/{MODEL_NAME}"
    if spec.startswith("runs:/"):
        run_id, _, path = spec[len("runs:/"):].strip("/").partition("/")
        if not RUN_ID.match(run_id):
            raise HandoffError(f"finetune.pretrained={spec!r}: {run_id!r} is not an MLflow run id (32 hex digits)")
        return f"runs:/{run_id}/{path or MODEL_NAME}"
    if spec.startswith("models:/"):
        name, _, ref = spec[len("models:/"):].strip("/").partition("/")
        if not name:
            raise HandoffError(f"finetune.pretrained={spec!r}: use models:/<name>/<version>, models:/<name>@<alias> "
                               f"or models:/<model_id>")
        return f"models:/{name}@{ref}" if ref and not ref.isdigit() else f"models:/{name}{'/' + ref if ref else ''}"
    raise HandoffError(f"finetune.pretrained={spec!r} is not an MLflow reference (runs:/, models:/ or a run id)")


@contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow draws a download progress bar on stderr: noise around a one-line error, and in every
    process's log of a multi-process job."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR as BAR

    before = BAR.get_raw()
    BAR.set(False)
    try:
        yield
    finally:
        if before is None:
            BAR.unset()
        else:
            BAR.set(before)


def _missing(err: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    # an unknown alias comes back as INVALID_PARAMETER_VALUE "... alias x not found"
    return isinstance(err, MlflowException) and (err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
                                                 or "not found" in str(err).lower())


def _locate(client, uri: str) -> tuple[str | None, str | None, str]:
    """(pretraining run id, logged model id, artifact URI to download) for `uri`; MLflow errors pass through.

    The download URI is the logged model's or the run's own artifact location, as the tracking store
    reports it: MLflow's runs:/ and models:/ repositories look logged models up through the process-wide
    tracking URI rather than the one they are given (MLflow 3.17), which would miss them and create a
    stray mlflow.db in the working directory.
    """
    if uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        run = client.get_run(run_id)
        name, _, rest = path.partition("/")
        model = _run_model(client, run, name)
        if model is None:
            return run_id, None, f"{run.info.artifact_uri}/{path}"
        return run_id, model.model_id, model.artifact_location + (f"/{rest}" if rest else "")
    ref = uri[len("models:/"):]
    if "@" in ref or "/" in ref:
        name, alias = ref.split("@", 1) if "@" in ref else (ref, None)
        mv = (client.get_model_version_by_alias(name, alias) if alias is not None
              else client.get_model_version(*ref.split("/", 1)))
        # the SQL registry leaves model_id empty; the version's source is then models:/<model_id>
        model_id = mv.model_id or (mv.source[len("models:/"):] if mv.source.startswith("models:/m-") else None)
        if model_id is None:
            return mv.run_id, None, client.get_model_version_download_uri(mv.name, mv.version)
        ref = model_id
    model = client.get_logged_model(ref)
    return model.source_run_id, model.model_id, model.artifact_location


def _run_model(client, run, name: str):
    """The newest logged model ``name`` of ``run``; failing that, for ``encoder``, the run's newest vitssl
    encoder whatever its name (encoders are named after their run; a model named ``encoder`` first)."""
    kinds = [f"name = '{name}'"] + ([f"model_type = '{MODEL_TYPE}'"] if name == MODEL_NAME else [])
    for kind in kinds:
        found = client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"{kind} AND source_run_id = '{run.info.run_id}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1)
        if found:
            return found[0]
    return None


def _read_export(downloaded: Path, spec: str, uri: str) -> dict:
    candidates = [downloaded] if downloaded.is_file() else [downloaded / EXPORT_FILE, downloaded / EXPORT_IN_MODEL]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise HandoffError(f"finetune.pretrained={spec!r}: {uri} holds no {EXPORT_FILE} (not a vitssl encoder; a "
                           f"pretraining run logs it as runs:/<run_id>/{MODEL_NAME})")
    try:
        export = torch.load(path, map_location="cpu", weights_only=True)
        if "state_dict" not in export or not {"model", "args"} & set(export):
            raise KeyError("model/state_dict")
    except Exception as e:  # unpickling or a missing key: either way not an export
        raise HandoffError(f"finetune.pretrained={spec!r}: the {EXPORT_FILE} in {uri} is not a vitssl encoder export "
                           f"({type(e).__name__}: {first_line(e)})") from None
    return export


def fetch_encoder(spec: str, tracking_uri: str) -> Handoff:
    """Download and read the encoder export that `spec` names; one HandoffError naming the URI otherwise."""
    import mlflow

    uri = normalise(spec)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        run_id, model_id, location = _locate(client, uri)
        experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name if run_id else None
    except Exception as e:
        what = "does not exist" if _missing(e) else "could not be looked up"
        raise HandoffError(f"finetune.pretrained={spec!r}: {uri} {what} in the tracking store {tracking_uri} "
                           f"({first_line(e)})") from None
    with tempfile.TemporaryDirectory(prefix="vitssl-pretrained-") as tmp:
        try:
            with _no_progress_bar():
                local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp,
                                                           tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except Exception as e:
            reason = (f"has no such artifact (a finished vitssl pretraining run logs runs:/<run_id>/{MODEL_NAME})"
                      if _missing(e) else f"could not be downloaded from {tracking_uri}")
            raise HandoffError(f"finetune.pretrained={spec!r}: {uri} {reason} ({first_line(e)})") from None
        export = _read_export(Path(local), spec, uri)
    return Handoff(uri, export, run_id, model_id, experiment)


def link_pretrained(tracking_uri: str, run_id: str, handoff: Handoff) -> None:
    """Record on a fine-tune run the exact encoder it consumed: the URI, and the logged model as a run input."""
    import mlflow
    from mlflow.entities import LoggedModelInput

    client = mlflow.MlflowClient(tracking_uri)
    client.set_tag(run_id, PRETRAINED_URI_TAG, handoff.uri)
    if handoff.model_id:
        client.set_tag(run_id, PRETRAINED_MODEL_TAG, handoff.model_id)
        client.log_inputs(run_id, models=[LoggedModelInput(handoff.model_id)])
