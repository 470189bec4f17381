"""A timm-layout ViT state dict (and mae's decoder) as a vitssl ViT export: sizes read from the weights,
the class position folded into the class token, the position table recognised, the config's
explicitly set model keys checked against the weights."""
from __future__ import annotations

import math
import re

import torch
from pydantic import ValidationError

from vitssl.config import ConfigError
from vitssl.export.pos_embed import LEARNED, VITSSL_SINCOS, table_kind
from vitssl.models import ViTOptions, export_options

# timm ViT arguments that change nothing our ViT computes differently (sizes are read separately)
NEUTRAL_TIMM_ARGS = {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio",
                     "class_token", "no_embed_class", "global_pool", "num_classes", "drop_rate", "pos_drop_rate",
                     "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "dynamic_img_size",
                     "dynamic_img_pad", "strict_img_size", "qkv_bias", "fc_norm", "weight_init"}

class WeightsError(ConfigError):
    """A file, folder or name that does not give usable encoder weights; the message says why."""


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
    try:
        options = ViTOptions(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                             mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim, cls_token=cls,
                             pos_embed="sincos" if kind == VITSSL_SINCOS else "learned")
    except ValidationError as e:
        raise WeightsError(f"{key}={source!r}: these weights are no vitssl ViT ({e.errors()[0]['msg']})") from None
    notes.append({VITSSL_SINCOS: "position embedding: vitssl's fixed sin-cos table (kept fixed)",
                  LEARNED: "position embedding: learned",
                  }.get(kind, "position embedding: mae's fixed sin-cos table, loaded as a learned parameter "
                              "(as mae's fine-tuning does)"))
    return {"arch": "vit", "model": options.model_dump(mode="json"), "image_size": grid * patch,
            "channels": in_chans, "state_dict": state, "objective": fmt, "format": fmt, "pos_table": kind,
            "notes": notes}


def check_model_keys(export: dict, model, key: str, source: str) -> None:
    """One error listing the config's explicitly set model.* keys that the weights contradict."""
    if model is None:
        return
    given = model.model_fields_set
    weights = export_options(export)[0].weight_options()
    wrong = [f"model.{k} {getattr(model, k)} (weights: {v})" for k, v in weights.items()
             if k in given and getattr(model, k) != v]
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
    options, size, _ = export_options(export)
    grid = size // options.patch_size
    kind = VITSSL_SINCOS
    if table is not None:
        if table.ndim != 3 or table.shape[1] not in (grid * grid, grid * grid + 1) or table.shape[2] != dim:
            raise WeightsError(f"{key}={source!r}: decoder_pos_embed {tuple(table.shape)} does not fit the "
                               f"{grid}x{grid} patch grid and decoder width {dim}")
        table = table[:, -grid * grid:]  # mae's class row is zero: our decoder gives the class token none
        kind = table_kind(table[0], grid)
    return export | {"decoder": decoder, "decoder_options": {"decoder_dim": dim, "decoder_depth": depth},
                     "decoder_pos": {"kind": kind, "table": table}}
