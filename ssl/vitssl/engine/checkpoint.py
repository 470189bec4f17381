"""Crash-safe checkpoints around accelerate's save_state / load_state.

accelerate writes straight into the target folder and prunes before the new one is complete.
Here every process writes into `.tmp-checkpoint-<step>`, the main process adds the trainer state
and the encoder export, then renames the folder to `checkpoint-<step>` (the rename marks it
complete) and only then prunes old ones. Resume only ever sees complete folders.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator

PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
ENCODER_FILE = "encoder.pt"
CONFIG_FILE = "config.yaml"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / TRAINER_STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, trainer_state: dict,
                    encoder_export: dict, config_yaml: str, keep: int) -> Path:
    """Collective: every process must call it. Returns the final folder."""
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        torch.save(encoder_export, tmp / ENCODER_FILE)
        (tmp / CONFIG_FILE).write_text(config_yaml)
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, folder: Path) -> dict:
    """Restore model, optimizer, scaler and RNG states; return the trainer state."""
    accelerator.load_state(str(folder))
    return json.loads((folder / TRAINER_STATE).read_text())


@dataclass
class Checkpointer:
    """Where and how often a run checkpoints, and what it exports beside accelerate's state.

    export: the unwrapped model -> the plain-data encoder export (`encoder.pt`).
    """

    root: Path
    every: int  # optimizer steps between checkpoints; 0 = at each epoch end
    keep: int
    export: Callable[[torch.nn.Module], dict]
    config_yaml: str

    def save(self, accelerator: Accelerator, model: torch.nn.Module, step: int, trainer_state: dict) -> Path:
        export = self.export(accelerator.unwrap_model(model)) if accelerator.is_main_process else {}
        return save_checkpoint(accelerator, self.root, step, trainer_state, export, self.config_yaml, self.keep)
