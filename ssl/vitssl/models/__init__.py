from vitssl.models.cnn import CNN, CNNArgs
from vitssl.models.decoder import MAEDecoder
from vitssl.models.registry import ARCHS, arch_of, encoder_export, encoder_from_export, make_encoder
from vitssl.models.swin import Swin, SwinArgs
from vitssl.models.vit import ViT, ViTArgs

__all__ = ["ARCHS", "CNN", "CNNArgs", "MAEDecoder", "Swin", "SwinArgs", "ViT", "ViTArgs", "arch_of",
           "encoder_export", "encoder_from_export", "make_encoder"]
