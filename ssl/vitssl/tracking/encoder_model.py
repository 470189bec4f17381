"""The pretrained encoder as an MLflow 3 logged model: what a fine-tune job on any machine downloads.

The logged model (a child of the pretraining run, `models:/<model_id>`), named after the run so that
MLflow's model lists tell the encoders apart (`runs:/<run_id>/<run name>`), holds
- an `mlflow.pytorch` model with a tensor signature: `mlflow.pytorch.load_model(uri)` gives the
  nn.Module back (vitssl must be importable), and
- `extra_files/encoder.pt`, the plain-data export (arch, options, input size, fp32 state dict) that vitssl's
  fine-tuning rebuilds the encoder from, loaded with `weights_only=True`, and
- beside it `config.json`, `model.safetensors` and `README.md` (vitssl.export.write): the folder
  `mlflow artifacts download` gives is one `timm.create_model("local-dir:<folder>", pretrained=True)`
  loads without vitssl (for encoders timm has an equivalent of).
With `register_as`, the model also becomes the next version of that registered model.

In `finetune.pretrained`, `runs:/<run_id>/encoder` names the run's encoder whatever the model's name
(``vitssl.tracking.handoff``; a model named `encoder` is taken first, as runs logged them so before).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from vitssl.models import Encoder, arch_of, encoder_from_export

MODEL_NAME = "encoder"  # in finetune.pretrained, runs:/<run_id>/encoder: the run's encoder, whatever its name
EXPORT_FILE = "encoder.pt"
EXPORT_IN_MODEL = f"extra_files/{EXPORT_FILE}"
MODEL_TYPE = "vitssl-encoder"


@dataclass(frozen=True)
class LoggedEncoder:
    model_uri: str  # models:/<model_id>
    model_id: str
    name: str  # the run's name: runs:/<run_id>/<name> is the model in MLflow's own tools
    registered_uri: str | None = None  # models:/<name>/<version> when registered


def model_name(run_name: str | None) -> str:
    """The run's name as a logged model's name: MLflow refuses / : . % and quotes in one."""
    name = re.sub(r"[/:.%\"']", "-", run_name or "")
    return name or MODEL_NAME


def fp32_export(export: dict) -> dict:
    """The export with every floating tensor on the CPU in fp32 (a bf16/fp16 run exports half tensors)."""
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu()
             for k, v in export["state_dict"].items()}
    return export | {"state_dict": state}


def example_input(encoder: Encoder, batch: int = 2) -> torch.Tensor:
    """Zeros of the shape the encoder takes: (B, C, H, W), or (B, C, T, H, W) for clip encoders."""
    return torch.zeros(batch, *encoder.input_shape)


def timm_files(export: dict, folder: Path, tracking_uri: str, run_id: str) -> list[str]:
    """The export as timm / Hugging Face files (weights, config, model card), or none, said in one line,
    for an encoder timm has no equivalent of."""
    from vitssl.export.card import class_names, model_card, run_facts
    from vitssl.export.timm_layout import NoTimmEquivalent, to_timm
    from vitssl.export.write import write_folder

    try:
        card = model_card(export, to_timm(export), run_facts(run_id, tracking_uri))
        written = write_folder(export, folder, card, class_names(export))
    except NoTimmEquivalent as e:
        print(f"logged encoder: no timm files ({e})")
        return []
    return [str(folder / name) for name in written.files]


def log_encoder(tracking_uri: str, run_id: str, export: dict, step: int, register_as: str | None = None,
                tags: dict[str, str] | None = None) -> LoggedEncoder:
    """Log `export` as the run's encoder model, named after the run (and register it as `register_as`)."""
    import mlflow
    from mlflow.models import infer_signature

    export = fp32_export(export)
    encoder = encoder_from_export(export)
    encoder.load_state_dict(export["state_dict"], strict=True)
    encoder.eval()
    x = example_input(encoder)
    with torch.no_grad():
        signature = infer_signature(x.numpy(), encoder(x).numpy())
    mlflow.set_tracking_uri(tracking_uri)  # log_model and register_model use the global URI
    run = mlflow.MlflowClient().get_run(run_id)
    name = model_name(run.info.run_name)
    # Created here so the model lands in the run's experiment (where runs:/<run_id>/<name> looks for
    # it), not in whichever experiment the fluent API considers active.
    model = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, model_type=MODEL_TYPE, experiment_id=run.info.experiment_id,
        tags={"vitssl.arch": arch_of(encoder), "vitssl.objective": str(export.get("objective")),
              **(tags or {})})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / EXPORT_FILE
        torch.save(export, path)
        extra = [str(path)] + timm_files(export, Path(tmp) / "timm", tracking_uri, run_id)
        info = mlflow.pytorch.log_model(
            encoder, name=name, model_id=model.model_id, run_id=run_id, step=step, signature=signature,
            input_example=x, extra_files=extra,  # the example lets the default pt2 format trace it
            # given explicitly: inferring them re-imports the model in a subprocess (slow, and may fail)
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            registered_model_name=register_as, await_registration_for=60)
    registered = (f"models:/{register_as}/{info.registered_model_version}"
                  if register_as and info.registered_model_version else None)
    return LoggedEncoder(info.model_uri, info.model_id, name, registered)
