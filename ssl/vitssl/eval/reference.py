"""Numbers from outside this project that the comparison prints beside its own."""
from __future__ import annotations

# The seeds' fine-tune test accuracy (%) on their MNIST 0/1/2 split (100 train + 100 test a class),
# one run each: `reference` for that protocol only.
SEEDS_FINETUNE = {"mae": 99.0, "infonce": 98.67, "mae_infonce": 98.0, "video_mae": 98.0}
