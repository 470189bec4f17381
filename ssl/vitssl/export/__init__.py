"""The encoder in other codebases' formats and back: timm / Hugging Face export (vitssl.export.write),
timm and mae weights as a starting point (vitssl.export.foreign), position embeddings for any image
size (vitssl.export.pos_embed, vitssl.export.resize). `python -m vitssl.export --help`."""
