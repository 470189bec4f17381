"""Weights from elsewhere as a vitssl encoder export: timm-layout files and folders, timm model names
whose weights are already in the local Hugging Face cache, and facebookresearch/mae's released
checkpoints ({'model': state_dict}, decoder_* keys kept for continued MAE pretraining).

Nothing here runs code from a file: safetensors, or torch.load(weights_only=True). Nothing is
downloaded. The result is the dict a vitssl `encoder.pt` holds (arch, args, state_dict) plus what
the import found out ("notes", the position table's kind, mae's decoder), so the rest of the
project treats imported weights like its own.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from vitssl.config import ConfigError
from vitssl.export.pos_embed import LEARNED, VITSSL_SINCOS, table_kind

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt", ".ckpt", ".tar")
# timm ViT arguments that change nothing our ViT computes differently (sizes are read separately)
NEUTRAL_TIMM_ARGS = {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                     "class_token", "no_embed_class", "global_pool", "num_classes", "drop_rate", "pos_drop_rate",
                     "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "dynamic_img_size",
                     "dynamic_img_pad", "strict_img_size", "qkv_bias", "fc_norm", "weight_init"}
# our ViTArgs field -> the model.* config key that sets it
VIT_MODEL_KEYS = {"patch_size": "patch_size", "embed_dim": "embed_dim", "depth": "depth", "num_heads": "num_heads",
                  "mlp_ratio": "mlp_ratio", "cls_token": "cls_token", "pos_embed": "pos_embed"}


class WeightsError(ConfigError):
    """A file, folder or name that does not give usable encoder weights; the message says why."""


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
            raise WeightsError(f"{key}={str(path)!r} is not a readable safetensors file ({_first_line(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding objects other than tensors
        raise WeightsError(f"{key}={str(path)!r} is not a weights-only checkpoint: torch.load(weights_only=True) "
                           f"refused it ({_first_line(e)}); re-save just its state dict, or use a .safetensors "
                           f"file") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__


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


def _square(n: int) -> int | None:
    r = math.isqrt(n)
    return r if r * r == n else None


def split_mae_decoder(state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """mae's decoder (and mask token) in vitssl's MAEDecoder key layout, apart from the encoder's weights."""
    encoder, decoder = {}, {}
    for k, v in state.items():
        if k == "mask_token":
            decoder["mask_token"] = v
        elif k.startswith("decoder_"):
            decoder[k.removeprefix("decoder_")] = v  # decoder_embed -> embed, decoder_blocks.0 -> blocks.0, ...
        else:
            encoder[k] = v
    return encoder, decoder


def vit_export(state: dict[str, torch.Tensor], source: str, fmt: str, known: dict, model, key: str) -> dict:
    """A vitssl ViT export from a timm-layout ViT state dict.

    known: timm model arguments the source states (config.json, a timm model); sizes it lacks come from
    the weights' shapes, then from `model` (the config's model section). A class position row is folded
    into the class token (our ViT gives the class token no position: same function); the patch table is
    recognised as this project's sin-cos (kept fixed), mae's sin-cos or learned.
    """
    notes: list[str] = []
    state = dict(state)
    proj = state.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or proj.shape[-1] != proj.shape[-2] or "blocks.0.mlp.fc1.weight" not in state:
        raise WeightsError(f"{key}={source!r}: no ViT weights in timm's layout (a square patch_embed.proj.weight, "
                           f"blocks.N.*); keys start {sorted(state)[:5]}")
    unsupported = sorted(f"{k}={v}" for k, v in known.items()
                         if k not in NEUTRAL_TIMM_ARGS and v not in (None, False, 0, "", []))
    unsupported += ["qkv_bias=False"] * (known.get("qkv_bias") is False) + ["fc_norm=True"] * (known.get("fc_norm") is True)
    if unsupported:
        raise WeightsError(f"{key}={source!r}: timm ViT arguments vitssl's ViT has no equivalent for: "
                           f"{', '.join(unsupported)}")
    head = [k for k in state if k.startswith("head.")]
    if head:
        notes.append(f"classifier head ignored ({', '.join(sorted(head))}): the fine-tune trains its own")
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    dim, in_chans, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    depth = 1 + max(int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    cls = "cls_token" in state
    pos = state.pop("pos_embed", None)
    size = known.get("img_size")
    grid = (size[0] if isinstance(size, (list, tuple)) else size) // patch if size else None
    kind = VITSSL_SINCOS
    if pos is not None:
        if pos.ndim != 3 or pos.shape[-1] != dim:
            raise WeightsError(f"{key}={source!r}: pos_embed {tuple(pos.shape)} does not fit embed_dim {dim}")
        prefix = 0 if known.get("no_embed_class") else None
        if prefix is None and grid is not None:
            prefix = pos.shape[1] - grid * grid
        if prefix is None:
            prefix = 0 if _square(pos.shape[1]) else 1
        grid = grid or _square(pos.shape[1] - prefix)
        if prefix not in (0, int(cls)) or grid is None or grid * grid != pos.shape[1] - prefix:
            raise WeightsError(f"{key}={source!r}: pos_embed {tuple(pos.shape)} is not a square patch grid with "
                               f"{int(cls)} class position (register tokens are not supported)")
        if prefix:
            class_pos = pos[:, :1]
            state["cls_token"] = state["cls_token"] + class_pos.to(state["cls_token"].dtype)
            if class_pos.abs().max() > 0:
                notes.append("the class token's position row is folded into the class token (same function)")
        pos = pos[:, prefix:]
        kind = table_kind(pos[0], grid)
        if kind != VITSSL_SINCOS:
            state["pos_embed"] = pos
    elif grid is None:
        raise WeightsError(f"{key}={source!r}: neither a pos_embed nor an image size: cannot tell the patch grid")
    heads = known.get("num_heads")
    if heads is None and model is not None and "num_heads" in model.model_fields_set:
        heads = model.num_heads
        notes.append(f"num_heads {heads} from model.num_heads (the file does not say)")
    elif heads is None:
        heads = max(1, dim // 64)
        notes.append(f"num_heads {heads} assumed: heads 64 wide, as in timm's and mae's ViTs (the file does not "
                     f"say; set model.num_heads if they differ)")
    if dim % heads:
        raise WeightsError(f"{key}={source!r}: width {dim} is not divisible by num_heads {heads} (model.num_heads)")
    args = dict(img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim, depth=depth,
                num_heads=heads, mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim, cls_token=cls,
                pos_embed="sincos" if kind == VITSSL_SINCOS else "learned")
    notes.append({VITSSL_SINCOS: "position embedding: vitssl's fixed sin-cos table (kept fixed)",
                  LEARNED: "position embedding: learned",
                  }.get(kind, "position embedding: mae's fixed sin-cos table, loaded as a learned parameter "
                              "(as mae's fine-tuning does)"))
    return {"arch": "vit", "args": args, "state_dict": state, "objective": fmt, "format": fmt, "pos_table": kind,
            "notes": notes}


def check_model_keys(export: dict, model, key: str, source: str) -> None:
    """One error listing the config's explicitly set model.* keys that the weights contradict."""
    if model is None or export.get("arch", "vit") != "vit":
        return
    given = model.model_fields_set
    wrong = [f"model.{m} {getattr(model, m)} (weights: {export['args'][a]})" for a, m in VIT_MODEL_KEYS.items()
             if m in given and getattr(model, m) != export["args"][a]]
    if "arch" in given and model.arch != "vit":
        wrong.insert(0, f"model.arch {model.arch} (weights: vit)")
    if wrong:
        raise WeightsError(f"{key}={source!r}: the config's model section contradicts the weights: {'; '.join(wrong)}"
                           f" (set these keys to the weights' values or remove them)")


def with_mae_decoder(export: dict, decoder: dict, key: str, source: str) -> dict:
    """The export with mae's decoder attached (MAEDecoder layout, position table's kind and size)."""
    if not decoder:
        return export
    table = decoder.pop("pos_embed", None)
    need = {"embed.weight", "pred.weight", "norm.weight"}
    if not need <= set(decoder):
        raise WeightsError(f"{key}={source!r}: mae decoder incomplete, missing {sorted(need - set(decoder))}")
    dim = decoder["embed.weight"].shape[0]
    depth = len({k.split(".")[1] for k in decoder if k.startswith("blocks.")})
    a = export["args"]
    grid = a["img_size"] // a["patch_size"]
    kind = VITSSL_SINCOS
    if table is not None:
        if table.ndim != 3 or table.shape[1] not in (grid * grid, grid * grid + 1) or table.shape[2] != dim:
            raise WeightsError(f"{key}={source!r}: decoder_pos_embed {tuple(table.shape)} does not fit the "
                               f"{grid}x{grid} patch grid and decoder width {dim}")
        table = table[:, -grid * grid:]  # mae's class row is zero: our decoder gives the class token none
        kind = table_kind(table[0], grid)
    return export | {"decoder": decoder, "decoder_args": {"dim": dim, "depth": depth},
                     "decoder_pos": {"kind": kind, "table": table}}


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
            raise WeightsError(f"{key}={spec!r}: timm cannot build the model in this folder ({_first_line(e)})") from None
        state, known = _timm_vit_state(built, spec, key)
        known |= {k: v for k, v in config.get("model_args", {}).items() if k not in known}
        export = vit_export(state, spec, "timm", known, model, key)
    elif is_weights_file(path) or (path.is_dir() and _lone_weights(path)):
        file = path if path.is_file() else _lone_weights(path)
        obj = read_weights(file, key)
        if isinstance(obj, dict) and {"args", "state_dict"} <= set(obj):
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
            raise WeightsError(f"{key}={spec!r}: timm cannot load its cached weights {file} ({_first_line(e)})") from None
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
