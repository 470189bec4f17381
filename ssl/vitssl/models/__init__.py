"""Encoders, decoders and the registry. Importing an architecture's module registers it."""
from vitssl.models.cnn import CNN, CNNOptions
from vitssl.models.decoder import MAEDecoder
from vitssl.models.encoder import (
    CLIPS,
    CLS_TOKEN,
    DROP_PATH,
    FEATURE_MAP,
    LAYER_IDS,
    MASKED_TOKENS,
    Encoder,
    EncoderOptions,
)
from vitssl.models.registry import (
    ENCODERS,
    arch_of,
    build_encoder,
    capabilities_of,
    encoder_export,
    encoder_from_config,
    encoder_from_export,
    encoder_options,
    encoder_spec,
    export_options,
    make_encoder,
    register_encoder,
)
from vitssl.models.swin import Swin, SwinOptions
from vitssl.models.vit import ViT, ViTOptions

__all__ = ["CLIPS", "CLS_TOKEN", "DROP_PATH", "FEATURE_MAP", "LAYER_IDS", "MASKED_TOKENS", "CNN", "ENCODERS",
           "CNNOptions", "Encoder", "EncoderOptions", "MAEDecoder", "Swin", "SwinOptions", "ViT",
           "ViTOptions", "arch_of", "build_encoder", "capabilities_of", "encoder_export", "encoder_from_config",
           "encoder_from_export", "encoder_options", "encoder_spec", "export_options", "make_encoder",
           "register_encoder"]
