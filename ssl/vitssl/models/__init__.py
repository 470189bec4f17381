"""Encoders, decoders and the registry. Importing an architecture's module registers it."""
from vitssl.models.cnn import CNN, CNNArgs
from vitssl.models.decoder import MAEDecoder
from vitssl.models.encoder import CLIPS, CLS_TOKEN, DROP_PATH, FEATURE_MAP, LAYER_IDS, MASKED_TOKENS, Encoder
from vitssl.models.registry import (
    ENCODERS,
    arch_of,
    capabilities_of,
    encoder_export,
    encoder_from_config,
    encoder_from_export,
    encoder_spec,
    make_encoder,
)
from vitssl.models.swin import Swin, SwinArgs
from vitssl.models.vit import ViT, ViTArgs

__all__ = ["CLIPS", "CLS_TOKEN", "DROP_PATH", "FEATURE_MAP", "LAYER_IDS", "MASKED_TOKENS", "CNN", "ENCODERS", "CNNArgs", "Encoder", "MAEDecoder", "Swin", "SwinArgs", "ViT", "ViTArgs", "arch_of",
           "capabilities_of", "encoder_export", "encoder_from_config", "encoder_from_export", "encoder_spec",
           "make_encoder"]
