"""A checkpoint is complete only with its marker, written last; pruning deletes the marker first,
so a folder a kill cut short during pruning is never resumed from and is removed by the next owner."""
from __future__ import annotations

import shutil

import torch
from accelerate import Accelerator

from vitssl.engine.checkpoint import (
    COMPLETE,
    ENCODER_FILE,
    latest_checkpoint,
    list_checkpoints,
    remove_checkpoint,
    remove_partial,
    save_checkpoint,
)


def test_marker_written_last_and_removed_first(tmp_path):
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(torch.nn.Linear(2, 2), torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
    for step in (1, 2, 3):
        save_checkpoint(acc, tmp_path, step, {"step": step}, {"w": 1}, "a: 1\n", keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002", "checkpoint-00000003"]
    assert all((p / COMPLETE).is_file() and (p / ENCODER_FILE).is_file() for p in list_checkpoints(tmp_path))

    # a prune killed after the marker went and part of the files: the folder is no checkpoint
    newest = latest_checkpoint(tmp_path)
    cut = shutil.copytree(newest, tmp_path / "checkpoint-00000004")
    (cut / COMPLETE).unlink()
    (cut / ENCODER_FILE).unlink()
    assert latest_checkpoint(tmp_path) == newest
    remove_partial(tmp_path)
    assert not cut.exists() and newest.exists()
    remove_checkpoint(newest)
    assert latest_checkpoint(tmp_path).name == "checkpoint-00000002"
