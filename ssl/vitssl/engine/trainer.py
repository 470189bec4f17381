"""One training loop for every objective: batch in, (loss, metrics) out.

The canonical accelerate loop (prepare -> accumulate -> backward -> step -> save_state) plus what
long runs need: a pure LR schedule, clipping, a non-finite-loss stop, throughput, MLflow
logging from the main process, crash-safe checkpoints, exact mid-epoch resume, and a clean stop
on SIGTERM/SIGINT that writes a checkpoint first.
"""
from __future__ import annotations

import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from accelerate import Accelerator
from tqdm.auto import tqdm

from vitssl.engine.builders import lr_at, set_lr
from vitssl.engine.checkpoint import load_checkpoint, save_checkpoint
from vitssl.tracking import MlflowRun
from vitssl.tracking.plots import close, curve_figure

LoaderFactory = Callable[[int, int], Iterable[dict]]  # (epoch, batches to skip) -> batches


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class Schedule:
    epochs: int
    steps_per_epoch: int  # optimizer steps
    grad_accum: int
    warmup_steps: int
    peak_lr: float
    min_lr: float
    max_steps: int | None = None

    @property
    def total_steps(self) -> int:
        total = self.epochs * self.steps_per_epoch
        return min(total, self.max_steps) if self.max_steps else total


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    mlflow_run_id: str | None = None
    history: dict[str, list] = field(default_factory=lambda: defaultdict(list))

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "mlflow_run_id": self.mlflow_run_id,
                "history": dict(self.history)}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        s = cls(d["epoch"], d["step"], d.get("mlflow_run_id"))
        s.history.update({k: [tuple(p) for p in v] for k, v in d.get("history", {}).items()})
        return s


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class FitResult:
    state: TrainState
    checkpoint: Path | None
    interrupted: bool
    last_metrics: dict[str, float]


class Trainer:
    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 make_loader: LoaderFactory, schedule: Schedule, tracker: MlflowRun, checkpoint_root: Path,
                 checkpoint_every: int, keep_checkpoints: int, log_every: int, grad_clip: float | None,
                 global_batch: int, export_encoder: Callable[[], dict], config_yaml: str,
                 figure_batch: dict | None = None):
        self.accelerator = accelerator
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.make_loader = make_loader
        self.schedule = schedule
        self.tracker = tracker
        self.checkpoint_root = checkpoint_root
        self.checkpoint_every = checkpoint_every
        self.keep = keep_checkpoints
        self.log_every = log_every
        self.grad_clip = grad_clip
        self.global_batch = global_batch
        self.export_encoder = export_encoder
        self.config_yaml = config_yaml
        self.figure_batch = figure_batch
        self.state = TrainState()
        self.last_checkpoint: Path | None = None
        self.last_saved_step: int | None = None

    # -- state ---------------------------------------------------------------------------------
    def resume_from(self, folder: Path) -> None:
        self.state = TrainState.from_dict(load_checkpoint(self.accelerator, folder))
        self.last_checkpoint, self.last_saved_step = folder, self.state.step

    def save(self) -> Path:
        self.last_checkpoint = save_checkpoint(
            self.accelerator, self.checkpoint_root, self.state.step, self.state.to_dict(),
            self.export_encoder(), self.config_yaml, self.keep)
        self.last_saved_step = self.state.step
        return self.last_checkpoint

    # -- loop ----------------------------------------------------------------------------------
    def _flags(self, loss: torch.Tensor, stop: bool) -> tuple[bool, bool]:
        """(any rank non-finite, any rank asked to stop), agreed by every process."""
        flags = torch.tensor([0.0 if torch.isfinite(loss.detach()).item() else 1.0, float(stop)])
        if self.accelerator.num_processes > 1:
            flags = flags.to(self.accelerator.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def _mean_across(self, values: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist(), strict=True))

    def fit(self) -> FitResult:
        acc, sch, st = self.accelerator, self.schedule, self.state
        total = sch.total_steps
        bar = tqdm(total=total, initial=st.step, disable=not acc.is_local_main_process, desc="train",
                   dynamic_ncols=True)
        last: dict[str, float] = {}
        with StopRequest() as stop:
            while st.step < total and st.epoch < sch.epochs:
                skip = (st.step - st.epoch * sch.steps_per_epoch) * sch.grad_accum
                sums: dict[str, float] = defaultdict(float)
                count, window_t, window_imgs = 0, time.perf_counter(), 0
                epoch_sums: dict[str, float] = defaultdict(float)
                epoch_count = 0
                self.model.train()
                for batch in self.make_loader(st.epoch, skip):
                    batch = {k: v.to(acc.device, non_blocking=True) for k, v in batch.items()}
                    with acc.accumulate(self.model):
                        loss, metrics = self.model(batch)
                        acc.backward(loss)
                        if acc.sync_gradients:
                            set_lr(self.optimizer, lr_at(st.step, total, sch.warmup_steps, sch.peak_lr, sch.min_lr))
                            if self.grad_clip:
                                metrics["grad_norm"] = acc.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                    window_imgs += next(iter(batch.values())).shape[0]
                    if not acc.sync_gradients:
                        continue
                    bad, stop_now = self._flags(loss, stop.requested)
                    if bad:
                        parts = {k: float(v) for k, v in metrics.items()}
                        raise NonFiniteLossError(
                            f"non-finite loss at step {st.step} (epoch {st.epoch}): loss={loss.item()} parts={parts}. "
                            "Lower optim.lr, enable run.grad_clip, or use bf16 instead of fp16.")
                    st.step += 1
                    bar.update(1)
                    values = {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}
                    for k, v in values.items():
                        sums[k] += v
                        epoch_sums[k] += v
                    count += 1
                    epoch_count += 1
                    if st.step % self.log_every == 0 or st.step == total:
                        elapsed = time.perf_counter() - window_t
                        logged = self._mean_across({k: v / count for k, v in sums.items()})
                        logged["images_per_s"] = window_imgs * acc.num_processes / max(elapsed, 1e-9)
                        logged["lr"] = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_scale", 1.0)
                        if acc.is_main_process:
                            self.tracker.log_metrics(logged, st.step)
                            st.history["loss"].append((st.step, logged["loss"]))
                            st.history["images_per_s"].append((st.step, logged["images_per_s"]))
                            bar.set_postfix(loss=f"{logged['loss']:.4f}", ips=f"{logged['images_per_s']:.0f}")
                        last = logged
                        sums, count, window_t, window_imgs = defaultdict(float), 0, time.perf_counter(), 0
                    if self.checkpoint_every and st.step % self.checkpoint_every == 0:
                        self.save()
                    if stop_now:
                        acc.print(f"stop requested: saving a checkpoint at step {st.step}")
                        self.save()
                        bar.close()
                        return FitResult(st, self.last_checkpoint, True, last)
                    if st.step >= total:
                        break
                if epoch_count:
                    self._end_epoch({k: v / epoch_count for k, v in epoch_sums.items()})
                if st.step >= (st.epoch + 1) * sch.steps_per_epoch:
                    st.epoch += 1
                elif st.step < total:
                    raise RuntimeError(f"the data loader ended epoch {st.epoch} after {epoch_count} of "
                                       f"{sch.steps_per_epoch} steps: every process must get equal batches")
                if st.step < total and not self.checkpoint_every:
                    self.save()
        if self.last_saved_step != st.step:
            self.save()
        bar.close()
        return FitResult(st, self.last_checkpoint, False, last)

    def _end_epoch(self, means: dict[str, float]) -> None:
        acc, st = self.accelerator, self.state
        means = self._mean_across(means)
        if not acc.is_main_process:
            return
        self.tracker.log_metrics({f"epoch_{k}": v for k, v in means.items()}, st.step)
        st.history["epoch_loss"].append((st.epoch + 1, means["loss"]))
        acc.print(f"epoch {st.epoch + 1}/{self.schedule.epochs} step {st.step}: "
                  + " ".join(f"{k}={v:.4f}" for k, v in sorted(means.items())))
        if self.figure_batch is not None:
            model = acc.unwrap_model(self.model)
            was_training = model.training
            model.eval()
            batch = {k: v.to(acc.device) for k, v in self.figure_batch.items()}
            with acc.autocast():
                figures = model.figures(batch)
            model.train(was_training)
            for name, fig in figures.items():
                self.tracker.log_figure(fig, f"figures/epoch_{st.epoch + 1:03d}_{name}")
                close(fig)

    def log_curves(self) -> None:
        if not self.accelerator.is_main_process:
            return
        fig = curve_figure({"loss": self.state.history.get("loss", [])}, title="training loss")
        self.tracker.log_figure(fig, "loss_curve.png")
        close(fig)

