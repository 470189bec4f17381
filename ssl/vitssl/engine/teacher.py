"""Load a fine-tuned classifier checkpoint as a frozen distillation teacher."""
from __future__ import annotations

from torch import nn

from vitssl.engine.finetune import PretrainedError, load_encoder, resolve_pretrained
from vitssl.objectives.distill import FrozenClassifier


def load_teacher(spec: str, tracking_uri: str | None) -> FrozenClassifier:
    """`spec` names a fine-tune checkpoint as finetune.pretrained does (run id, runs:/<id>, checkpoint
    folder, output dir). Its export must hold the classifier head (fine-tune mode `finetune`)."""
    found = resolve_pretrained(spec, tracking_uri)
    if found.folder is None:
        raise PretrainedError("finetune.teacher=none: distillation needs a fine-tuned classifier checkpoint")
    encoder, export = load_encoder(found.folder)
    if "head" not in export:
        raise PretrainedError(f"finetune.teacher={spec!r}: {found.folder} holds an encoder without a classifier "
                              f"head (a pretraining checkpoint?); use a finetune.mode=finetune run")
    weight = export["head"]["weight"]
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict(export["head"])
    pool = export.get("config", {}).get("finetune", {}).get("pool", "cls")
    return FrozenClassifier(encoder, head, pool)
