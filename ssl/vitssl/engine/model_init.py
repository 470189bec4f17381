"""`model.init`: pretraining that starts from existing weights (anything `finetune.pretrained` accepts).

resolve_init: the config's model section (and an mae checkpoint's decoder size) become the weights';
              keys the config sets explicitly must agree, else one error listing them.
load_init:    the encoder weights, and mae's decoder when the file has one, loaded into the objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from vitssl.engine.pretrained import PretrainedError, fit_export, load_encoder_weights, resolve_pretrained
from vitssl.models import export_options


@dataclass
class Init:
    """`model.init` resolved: the export fitted to the data, and where it came from."""
    export: dict
    source: str


def resolve_init(cfg, say: Callable[[str], None] = print):
    """(config whose model section, and MAE decoder size, are the `model.init` weights', Init or None).

    Keys the config sets explicitly must agree with the weights: otherwise one error listing them."""
    spec = cfg.model.init
    if spec == "none":
        return cfg, None
    found = resolve_pretrained(spec, cfg.run.tracking_uri, cfg.model, key="model.init", check_model=False)
    export = fit_export(found.export, cfg.data, found.source, say)
    options = export_options(export)[0]
    weights, objective = options.weight_options(), export.get("decoder_options", {})
    given_model, given_objective = cfg.model.model_fields_set, set(cfg.objective)
    wrong = [f"model.{k} {getattr(cfg.model, k)} (weights: {v})" for k, v in weights.items()
             if k in given_model and getattr(cfg.model, k) != v]
    wrong += [f"objective.{k} {cfg.objective[k]} (weights: {v})" for k, v in objective.items()
              if k in given_objective and cfg.objective[k] != v]
    if wrong:
        raise PretrainedError(f"model.init={spec!r}: the config contradicts the weights: {'; '.join(wrong)} (set "
                              f"these keys to the weights' values or remove them)")
    # the weights fix the architecture; the run keeps its own run options (model.init, dropout, ...)
    run = {k: v for k, v in cfg.model.model_dump(mode="json").items() if k in options.run_options}
    raw = cfg.model_dump() | {"model": run | weights, "objective": cfg.objective | objective}
    from vitssl.config.load import build_config

    return build_config(type(cfg), raw, f"model.init={spec}"), Init(export, found.source)


def load_init(objective: torch.nn.Module, init: Init, say: Callable[[str], None] = print) -> None:
    """Load `model.init`'s encoder weights into the objective's encoder, and mae's decoder, when the
    weights carry one, into the objective's MAE decoder."""
    from vitssl.models import MAEDecoder

    load_encoder_weights(objective.encoder, init.export["state_dict"], init.source)
    decoder = init.export.get("decoder")
    targets = [m for m in objective.modules() if isinstance(m, MAEDecoder)]
    if decoder is None:
        return
    if len(targets) != 1:
        say(f"{init.source}: mae decoder weights ignored (this objective has no MAE decoder)")
        return
    load_mae_decoder(targets[0], decoder, init.export.get("decoder_pos", {}), init.source, say)


def load_mae_decoder(target, decoder: dict, pos: dict, source: str, say: Callable[[str], None]) -> None:
    from vitssl.export.pos_embed import LEARNED, MAE_SINCOS, mae_sincos, resample_grid

    decoder = dict(decoder)
    if target.mask_token is None and decoder.pop("mask_token", None) is not None:
        say(f"{source}: mae's decoder mask token unused (objective.style is not drop)")
    pred, own = decoder.get("pred.weight"), target.pred.weight
    if pred is not None and pred.shape != own.shape and pred.shape[0] % own.shape[0] == 0:
        # mae predicts (p, p, C) pixels per patch, as patchify orders them: fewer channels take the mean
        c = pred.shape[0] // own.shape[0]
        decoder["pred.weight"] = pred.reshape(own.shape[0], c, -1).mean(1)
        decoder["pred.bias"] = decoder["pred.bias"].reshape(own.shape[0], c).mean(1)
        say(f"{source}: decoder predicts the mean of its {c} channels' pixels")
    load_encoder_weights(target, decoder, f"{source} (decoder)")
    kind, table = pos.get("kind"), pos.get("table")
    grid = int(target.num_patches ** 0.5)
    if kind == MAE_SINCOS:
        target.pos_embed.copy_(mae_sincos(target.pos_embed.shape[-1], grid)[None])
        say(f"{source}: decoder keeps mae's fixed sin-cos table")
    elif kind == LEARNED and table is not None:
        old = int(table.shape[1] ** 0.5)
        target.pos_embed.copy_(resample_grid(table, old, grid, LEARNED))
        say(f"{source}: decoder position table taken from the weights")
