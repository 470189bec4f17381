"""Write an encoder export as a folder timm (and the Hugging Face Hub) loads by itself:

    model.safetensors   the weights in timm's key layout (a ViT's actual position table included)
    config.json         timm's hub layout: architecture, num_classes, model_args, pretrained_cfg
    README.md           (format hf) the model card, generated from the run

    timm.create_model("local-dir:DIR", pretrained=True)

config.json is written here rather than by timm's `save_for_hf`, so logging an encoder to MLflow
does not import timm; `verify_with_timm` loads the written folder with timm and compares outputs.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from vitssl.export.timm_layout import TimmModel, to_timm
from vitssl.models import encoder_from_export, export_options

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMATS = ("timm", "hf")
# how this project feeds images: stored at their size, pixels scaled to [0, 1], no mean/std shift
INTERPOLATION = "bicubic"


def timm_config(tm: TimmModel, in_chans: int, img_size: int) -> dict:
    """config.json in the layout timm's `save_for_hf` writes (and `load_model_config_from_path` reads)."""
    swin = "depths" in tm.model_args
    num_classes = tm.model_args["num_classes"]
    args = tm.model_args | {"img_size": [img_size, img_size]}
    embed = tm.model_args["embed_dim"]
    config = {"architecture": tm.architecture, "num_classes": num_classes,
              "num_features": 2 * embed if swin else embed, "global_pool": tm.model_args["global_pool"]}
    if tm.label_names:
        config["label_names"] = list(tm.label_names)
    config["model_args"] = args
    config["pretrained_cfg"] = {
        "custom_load": False, "input_size": [in_chans, img_size, img_size], "fixed_input_size": True,
        "interpolation": INTERPOLATION, "crop_pct": 1.0, "crop_mode": "center",
        "mean": [0.0] * in_chans, "std": [1.0] * in_chans, "num_classes": num_classes, "pool_size": None,
        "first_conv": "patch_embed.proj", "classifier": "head.fc" if swin else "head"}
    return config


@dataclass
class Written:
    folder: Path
    files: dict[str, int]  # name -> bytes
    timm: TimmModel


def write_folder(export: dict, out: Path, card: str | None = None, label_names: list[str] | None = None,
                 overwrite: bool = False) -> Written:
    """Write the timm folder for `export` (and README.md when `card` is given) to `out`, atomically:
    into a temporary sibling first, renamed into place once complete. NoTimmEquivalent if it has none."""
    from safetensors.torch import save_file

    tm = to_timm(export)
    if label_names and tm.model_args["num_classes"] == len(label_names):
        tm.label_names = label_names
    _, size, chans = export_options(export)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        state = {k: v.detach().float().contiguous() if v.is_floating_point() else v.detach().contiguous()
                 for k, v in tm.state_dict.items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(timm_config(tm, chans, size), indent=2) + "\n")
        if card is not None:
            (tmp / CARD_FILE).write_text(card)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Written(out, {p.name: p.stat().st_size for p in sorted(out.iterdir())}, tm)


def vitssl_forward(export: dict):
    """The export's own function: the encoder's pooled embedding, or the classifier's logits."""
    encoder = encoder_from_export(export)
    encoder.load_state_dict(export["state_dict"], strict=True)
    encoder.eval()
    head = None
    if "head" in export:
        weight = export["head"]["weight"]
        head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        head.load_state_dict(export["head"])
    pool = ((export.get("config") or {}).get("finetune") or {}).get("pool", "cls")

    def forward(x: torch.Tensor) -> torch.Tensor:
        z = encoder.embed_images(x, pool)
        return head(z) if head is not None else z

    return forward


@torch.no_grad()
def verify_with_timm(export: dict, folder: Path, batch: int = 4, seed: int = 0) -> float:
    """Load `folder` with timm alone and return the largest difference to vitssl's outputs on random images."""
    import timm

    _, size, chans = export_options(export)
    x = torch.rand(batch, chans, size, size, generator=torch.Generator().manual_seed(seed))
    model = timm.create_model(f"local-dir:{Path(folder).resolve()}", pretrained=True).eval()
    return float((model(x) - vitssl_forward(export)(x)).abs().max())
