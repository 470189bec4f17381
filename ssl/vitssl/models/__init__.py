from vitssl.models.decoder import MAEDecoder
from vitssl.models.vit import ViT, ViTArgs

__all__ = ["ViT", "ViTArgs", "MAEDecoder"]
