"""Weights from elsewhere as a vitssl encoder export: timm-layout files and folders, timm model names
whose weights are already in the local Hugging Face cache, and facebookresearch/mae's released
checkpoints ({'model': state_dict}, decoder_* keys kept for continued MAE pretraining).

Nothing here runs code from a file: safetensors, or torch.load(weights_only=True). Nothing is
downloaded. The result is the dict a vitssl `encoder.pt` holds (arch, options, input size, state_dict)
plus what the import found out ("notes", the position table's kind, mae's decoder), so the rest of
the project treats imported weights like its own.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from vitssl.export.vit_state import (
    WeightsError,
    check_model_keys,
    split_mae_decoder,
    vit_export,
    with_mae_decoder,
)
from vitssl.messages import first_line
from vitssl.models import export_options

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt", ".ckpt", ".tar")


def is_weights_file(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in WEIGHT_SUFFIXES)


def read_weights(path: Path, key: str) -> object:
    """The object a weights file holds, without running any code from it."""
    if path.name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{key}={str(path)!r} is not a readable safetensors file ({first_line(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding objects other than tensors
        raise WeightsError(f"{key}={str(path)!r} is not a weights-only checkpoint: torch.load(weights_only=True) "
                           f"refused it ({first_line(e)}); re-save just its state dict, or use a .safetensors "
                           f"file") from None


def is_vitssl_export(obj: object) -> bool:
    """Whether a loaded file is a vitssl encoder export (in any of its layouts)."""
    if not isinstance(obj, dict) or "state_dict" not in obj:
        return False
    try:
        export_options(obj)
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _tensors(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state(obj: object, key: str, source: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, layout) of a loaded checkpoint: "mae" for {'model': ...} with decoder keys or mae's
    wrapper, "timm" for a bare state dict (or one under 'state_dict' / 'model')."""
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict", "model_state"):
            if wrapper in obj and _tensors(obj[wrapper]):
                state = obj[wrapper]
                layout = "mae" if wrapper == "model" else "timm"
                return {k.removeprefix("module."): v for k, v in state.items()}, layout
        if _tensors(obj):
            return {k.removeprefix("module."): v for k, v in obj.items()}, "timm"
    raise WeightsError(f"{key}={source!r} holds no state dict (a mapping of weight names to tensors, bare or "
                       f"under 'model' / 'state_dict'): not a timm or mae checkpoint")


def _timm_vit_state(model, source: str, key: str) -> tuple[dict, dict]:
    """(state dict, known arguments) of a built timm model, if it is a ViT our ViT computes exactly."""
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn

    if type(model) is not VisionTransformer:
        raise WeightsError(f"{key}={source!r} is a timm {type(model).__name__}; vitssl imports timm ViTs "
                           f"(VisionTransformer) only")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    differ = []
    if any(n.eps != 1e-6 for n in norms):
        differ.append(f"LayerNorm eps {sorted({n.eps for n in norms})} (vitssl: 1e-6)")
    act = [getattr(b.mlp, "act", None) for b in model.blocks]
    if not all(isinstance(m, nn.GELU) and m.approximate == "none" for m in act):
        differ.append(f"MLP activation {type(act[0]).__name__} (vitssl: exact GELU)")
    if getattr(model, "attn_pool", None) is not None:
        differ.append("attention pooling")
    if differ:
        raise WeightsError(f"{key}={source!r}: this timm ViT computes differently from vitssl's: {'; '.join(differ)}")
    known = {"img_size": list(model.patch_embed.img_size), "num_heads": model.blocks[0].attn.num_heads,
             "no_embed_class": model.no_embed_class}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, known


def cached_timm_file(name: str, key: str) -> str:
    """The local file holding timm model `name`'s pretrained weights; never downloads."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise WeightsError(f"{key}={name!r}: timm knows the architecture but no pretrained weights by this name "
                           f"(see timm.list_pretrained({name.split('.')[0]!r} + '*'))")
    hub_id = getattr(cfg, "hf_hub_id", None)
    candidates = []
    if hub_id:
        repo, _, revision = hub_id.partition("@")
        files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                      "pytorch_model.bin"]
        for filename in files:
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found
            candidates.append(f"hf-hub:{repo}/{filename}")
    raise WeightsError(f"{key}={name!r}: its weights are not in the local Hugging Face cache ({', '.join(candidates) or 'no hub id'}) "
                       f"and vitssl does not download at run time: fetch them first (python -c \"import timm; "
                       f"timm.create_model('{name}', pretrained=True)\") or pass a weights file")


def read_foreign(spec: str, model, key: str = "finetune.pretrained", check: bool = True) -> dict | None:
    """The export for a timm/mae file or folder or a cached timm model name; None when `spec` is none of
    these (a vitssl checkpoint folder, an MLflow reference). `model`: the config's model section (or
    None), whose explicitly set keys must agree with the weights when `check`."""
    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file() and not (path / "encoder.pt").is_file():
        import timm

        try:
            config = json.loads((path / "config.json").read_text())
            built = timm.create_model(f"local-dir:{path}", pretrained=True)
        except WeightsError:
            raise
        except Exception as e:
            raise WeightsError(f"{key}={spec!r}: timm cannot build the model in this folder ({first_line(e)})") from None
        state, known = _timm_vit_state(built, spec, key)
        known |= {k: v for k, v in config.get("model_args", {}).items() if k not in known}
        export = vit_export(state, spec, "timm", known, model, key)
    elif is_weights_file(path) or (path.is_dir() and _lone_weights(path)):
        file = path if path.is_file() else _lone_weights(path)
        obj = read_weights(file, key)
        if is_vitssl_export(obj):
            return obj  # a vitssl encoder.pt given as a file
        state, layout = unwrap_state(obj, key, spec)
        encoder, decoder = split_mae_decoder(state) if layout == "mae" else (state, {})
        export = with_mae_decoder(vit_export(encoder, spec, layout, {}, model, key), decoder, key, spec)
    elif not path.exists() and _looks_like_timm_name(spec):
        import timm

        if not timm.is_model(spec.split(".")[0]):
            return None
        file = cached_timm_file(spec, key)
        try:
            built = timm.create_model(spec, pretrained=True, pretrained_cfg_overlay={"file": file})
        except Exception as e:
            raise WeightsError(f"{key}={spec!r}: timm cannot load its cached weights {file} ({first_line(e)})") from None
        state, known = _timm_vit_state(built, spec, key)
        export = vit_export(state, spec, "timm", known, model, key)
    else:
        return None
    if check:
        check_model_keys(export, model, key, spec)
    return export


def _lone_weights(folder: Path) -> Path | None:
    """A folder's one weights file (timm's preferred name first), when it holds no vitssl checkpoint."""
    if (folder / "encoder.pt").is_file() or any(folder.glob("checkpoint-*")):
        return None
    for name in ("model.safetensors", "pytorch_model.bin", "model.pth"):
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if is_weights_file(p))
    return files[0] if len(files) == 1 else None


def _looks_like_timm_name(spec: str) -> bool:
    return bool(re.fullmatch(r"[a-z0-9_]+(\.[A-Za-z0-9_]+)?", spec)) and "_" in spec
