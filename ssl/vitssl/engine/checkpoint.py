"""Crash-safe checkpoints around accelerate's save_state / load_state.

accelerate writes straight into the target folder and prunes before the new one is complete.
Here every process writes into `.tmp-checkpoint-<step>`, the main process adds the trainer state,
the encoder export and, last, the completion marker `COMPLETE`, then renames the folder to
`checkpoint-<step>` and only then prunes old ones, deleting each one's marker first. A folder is a
checkpoint only with its marker, so one cut short by a kill during pruning is never resumed from
(and is removed when the folder's next owner starts).

A checkpoint folder is trusted input: accelerate restores RNG states and DeepSpeed its optimizer
state with `torch.load(weights_only=False)`, which can run code. Resume only from folders you wrote.
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import SafetensorError

from vitssl.messages import first_line

PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
ENCODER_FILE = "encoder.pt"
CONFIG_FILE = "config.yaml"
COMPLETE = "COMPLETE"  # written last: the folder holds every file of the checkpoint


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and (p / COMPLETE).is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


class CheckpointWriteError(Exception):
    """The disk refused a checkpoint (full, read-only); the partial folder has been removed."""


def remove_partial(root: Path) -> None:
    """Drop what a killed or failed save or prune left: `.tmp-checkpoint-*` folders and checkpoint
    folders without their marker (the caller owns the folder)."""
    for tmp in root.glob(f".tmp-{PREFIX}*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for cut in root.glob(f"{PREFIX}*"):
        if cut.is_dir() and not (cut / COMPLETE).is_file():
            shutil.rmtree(cut, ignore_errors=True)


def remove_checkpoint(folder: Path) -> None:
    """The marker first: a kill mid-way leaves a folder no one takes for a checkpoint."""
    (folder / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, trainer_state: dict,
                    encoder_export: dict, config_yaml: str, keep: int) -> Path:
    """Collective: every process must call it. Returns the final folder."""
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            torch.save(encoder_export, tmp / ENCODER_FILE)
            (tmp / CONFIG_FILE).write_text(config_yaml)
            (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
            (tmp / COMPLETE).write_text(f"{step}\n")
    except (OSError, RuntimeError, SafetensorError) as err:  # how torch.save and safetensors report a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(root)
        raise CheckpointWriteError(
            f"writing checkpoint {step} into {root} failed ({first_line(err, 160)}); the partial folder "
            f"was removed, the last complete one is {last.name if last else 'none'}: free space and run the "
            "same command to resume") from None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            remove_checkpoint(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep]:
            remove_checkpoint(old)
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
        with master_weights(accelerator, model) as unwrapped:  # collective under DeepSpeed
            export = self.export(unwrapped) if accelerator.is_main_process else {}
        return save_checkpoint(accelerator, self.root, step, trainer_state, export, self.config_yaml, self.keep)


@contextmanager
def master_weights(accelerator: Accelerator, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The unwrapped model; under DeepSpeed, on the main process, holding the fp32 master weights.

    DeepSpeed keeps the fp32 masters sharded in its optimizer: the module holds bf16 copies under
    bf16, and under ZeRO-3 only its own shard. Every process must enter (the masters are gathered);
    the main process's parameters point at full fp32 tensors inside the block and are restored after.
    """
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        yield unwrapped
        return
    from deepspeed import zero
    from deepspeed.utils import safe_get_full_fp32_param

    full = {}
    for name, p in unwrapped.named_parameters():
        w = safe_get_full_fp32_param(p)
        if w is None:  # not trained, so not in the optimizer: the module's copy is all there is
            with zero.GatheredParameters([p]):  # ZeRO-3 only; a no-op otherwise
                w = p.detach().float().clone()
        if accelerator.is_main_process:
            full[name] = w.detach().cpu()
    if not accelerator.is_main_process:
        yield unwrapped
        return
    params = dict(unwrapped.named_parameters())
    held = {name: p.data for name, p in params.items()}
    try:
        for name, p in params.items():
            p.data = full[name]
        yield unwrapped
    finally:
        for name, p in params.items():
            p.data = held[name]
