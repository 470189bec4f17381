"""The encoder in other codebases' formats and back: timm / Hugging Face folders with a model card
(write, card, timm_layout; `python -m vitssl.export --help`), timm and mae weights as a starting point
(foreign, vit_state), position embeddings for any image size (pos_embed, resize)."""
