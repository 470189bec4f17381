"""The pretrained encoder a fine-tune starts from: find it, rebuild it, load exactly its weights.

resolve_pretrained:  `finetune.pretrained` -> the encoder: a checkpoint folder or pretrain output dir
                     (its latest checkpoint) read in place; runs:/<id>[/path], models:/<name>/<version|alias>,
                     models:/<model_id> or a bare run id downloaded through MLflow (vitssl.tracking.handoff);
                     a timm-layout or mae weights file or folder, or a cached timm model name
                     (vitssl.export.foreign); none trains from scratch.
load_encoder:        rebuild the encoder (any registered arch) from the saved arguments and load
                     exactly its weights.
load_teacher:        a fine-tuned classifier, frozen, for label-free distillation.
`model.init` for pretraining reads the same sources: vitssl.engine.model_init.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vitssl.config import ConfigError
from vitssl.config.finetune import FinetuneConfig
from vitssl.engine.checkpoint import ENCODER_FILE, TRAINER_STATE, latest_checkpoint
from vitssl.export.foreign import WeightsError, read_foreign
from vitssl.export.resize import fit_to_data
from vitssl.models import EncoderOptions, encoder_from_config, encoder_from_export, export_options
from vitssl.objectives.distill import FrozenClassifier
from vitssl.tracking import resolve_tracking_uri
from vitssl.tracking.handoff import Handoff, HandoffError, fetch_encoder, is_mlflow_reference


class PretrainedError(ConfigError):
    """`finetune.pretrained` does not name a usable encoder; the message says why."""


@dataclass
class Pretrained:
    folder: Path | None  # None: from scratch
    run_id: str | None = None  # the pretraining MLflow run, when known
    experiment: str | None = None  # its experiment's name, when the run is in this tracking store
    objective: str = "none"
    handoff: Handoff | None = None  # the export downloaded through MLflow, and which artifact it was
    export: dict | None = None  # encoder.pt's content, read once (None: from scratch)
    imported: str | None = None  # a timm / mae file, folder or timm model name the export was converted from

    @property
    def scratch(self) -> bool:
        return self.export is None

    @property
    def source(self) -> str:
        """Where the encoder came from: the MLflow URI it was downloaded from, the imported weights, or the
        checkpoint folder."""
        return self.handoff.uri if self.handoff else self.imported or str(self.folder or "none")


def resolve_pretrained(spec: str, tracking_uri: str | None, model=None,
                       key: str = "finetune.pretrained", check_model: bool = True) -> Pretrained:
    """Find the encoder that `finetune.pretrained` (or `model.init`: `key`) names (see FinetuneOptions.pretrained).
    `model`: the config's model section, for what imported weights do not say (a ViT's num_heads); with
    `check_model`, its explicitly set keys must agree with imported weights."""
    if spec == "none":
        return Pretrained(None)
    try:
        export = read_foreign(spec, model, key, check_model)
    except WeightsError as e:
        raise PretrainedError(str(e)) from None
    if export is not None:
        return Pretrained(None, objective=_objective(export), export=export, imported=spec)
    path = Path(spec)
    if path.is_dir():
        folder = path if (path / ENCODER_FILE).is_file() else latest_checkpoint(path)
        if folder is None:
            raise PretrainedError(
                f"{key}={spec!r} is neither a checkpoint folder (with {ENCODER_FILE}) nor a pretrain "
                f"output dir holding complete checkpoint-* folders")
        run_id = None
        if (folder / TRAINER_STATE).is_file():
            run_id = json.loads((folder / TRAINER_STATE).read_text()).get("mlflow_run_id")
        experiment = None
        if run_id:
            import mlflow

            client = mlflow.MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
            try:
                experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name
            except Exception:  # the run lives in another store: keep its id, use run.experiment
                pass
        export = read_export(folder)
        return Pretrained(folder, run_id, experiment, _objective(export), export=export)
    if not is_mlflow_reference(spec):
        raise PretrainedError(f"{key}={spec!r}: no such file or folder, not a cached timm model name, and not an "
                              f"MLflow reference (runs:/<run_id>[/path], models:/<name>/<version|alias>, "
                              f"models:/<model_id>, or a run id); use none to train from scratch")
    try:
        handoff = fetch_encoder(spec, resolve_tracking_uri(tracking_uri))
    except HandoffError as e:
        raise PretrainedError(str(e)) from None
    return Pretrained(None, handoff.run_id, handoff.experiment, _objective(handoff.export), handoff, handoff.export)


def _objective(export) -> str:
    """The pretext objective an export names; "unknown" for anything else (rebuilding it then says why)."""
    return str(export.get("objective", "unknown")) if isinstance(export, dict) else "unknown"


def load_encoder_weights(encoder: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every encoder weight, strictly: missing, unexpected or mis-shaped keys are one error line listing them."""
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs encoder {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if keys]
        raise PretrainedError(f"the encoder weights in {source} do not fit the encoder its arguments describe "
                              f"(another architecture?): " + "; ".join(parts))
    encoder.load_state_dict(state_dict, strict=True)


def read_export(folder: Path) -> dict:
    """The content of a checkpoint folder's `encoder.pt`."""
    path = folder / ENCODER_FILE
    if not path.is_file():
        raise PretrainedError(f"{folder} has no {ENCODER_FILE}: not a vitssl checkpoint folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling: not an export
        raise PretrainedError(f"{path} is not a vitssl encoder export ({type(e).__name__}: {e})") from None


def load_encoder(folder: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the encoder from `encoder.pt`'s saved arch and arguments and load exactly its weights."""
    export = read_export(folder)
    return rebuild_encoder(export, str(folder / ENCODER_FILE)), export


def export_options_of(export: dict, source: str) -> tuple[EncoderOptions, int, int]:
    """(options, image size, channels) of an export; PretrainedError when it is not one."""
    try:
        return export_options(export)
    except Exception as e:  # a missing key, an unknown arch or option: all mean "not an export"
        raise PretrainedError(f"{source} is not a vitssl encoder export ({type(e).__name__}: {e})") from None


def rebuild_encoder(export: dict, source: str) -> torch.nn.Module:
    try:
        encoder = encoder_from_export(export)
        state_dict = export["state_dict"]
    except Exception as e:  # a missing key, an unknown arch or argument: all mean "not an export"
        raise PretrainedError(f"{source} is not a vitssl encoder export ({type(e).__name__}: {e})") from None
    load_encoder_weights(encoder, state_dict, source)
    return encoder


def export_source(found: Pretrained) -> str:
    return found.handoff.uri if found.handoff else found.imported or str(found.folder / ENCODER_FILE)


def pretrained_encoder(found: Pretrained) -> tuple[torch.nn.Module, dict]:
    """The encoder and export `found` names, from its MLflow download, its checkpoint folder or the
    imported weights, at the size it was saved for."""
    return rebuild_encoder(found.export, export_source(found)), found.export


def load_teacher(spec: str, tracking_uri: str | None) -> FrozenClassifier:
    """A fine-tuned classifier, frozen, as a distillation teacher. `spec` names its checkpoint as
    `finetune.pretrained` does; the export must hold the head (a finetune.mode=finetune run)."""
    found = resolve_pretrained(spec, tracking_uri)
    if found.scratch:
        raise PretrainedError("finetune.teacher=none: distillation needs a fine-tuned classifier checkpoint")
    encoder, export = pretrained_encoder(found)
    if "head" not in export:
        raise PretrainedError(f"finetune.teacher={spec!r}: {found.source} holds an encoder without a classifier "
                              f"head (a pretraining checkpoint?); use a finetune.mode=finetune run")
    weight = export["head"]["weight"]
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict(export["head"])
    return FrozenClassifier(encoder, head, export.get("config", {}).get("finetune", {}).get("pool", "cls"))


def build_encoder(cfg: FinetuneConfig, pretrained: Pretrained, say: Callable[[str], None] = print) -> torch.nn.Module:
    """The encoder to fine-tune: from scratch, or the pretrained one rebuilt for the data's image size
    (position embeddings recomputed or resampled, `say` tells which) and channels."""
    if pretrained.scratch:
        return encoder_from_config(cfg.model, cfg.data)
    export = pretrained.export
    arch = export_options_of(export, export_source(pretrained))[0].arch
    if "arch" in cfg.model.model_fields_set and cfg.model.arch != arch:
        raise PretrainedError(f"finetune.pretrained={cfg.finetune.pretrained!r}: {pretrained.source} holds a {arch} "
                              f"encoder, the config asks for model.arch {cfg.model.arch} (drop model.arch: a "
                              f"pretrained encoder is rebuilt from its own arguments)")
    fitted = fit_export(export, cfg.data, pretrained.source, say)
    return rebuild_encoder(fitted, export_source(pretrained))


def fit_export(export: dict, data, source: str, say: Callable[[str], None]) -> dict:
    """`export` for the data's image size and channels; says what the import and the fitting did."""
    try:
        fitted, notes = fit_to_data(export, data.image_size, data.channels, source)
    except ConfigError as e:
        raise PretrainedError(str(e)) from None
    for note in export.get("notes", []) + notes:
        say(f"{source}: {note}")
    return fitted
