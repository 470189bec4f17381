"""One training loop for every objective: batch in, (loss, metrics) out.

The canonical accelerate loop (prepare -> accumulate -> backward -> step -> save_state) plus what
long runs need: a pure LR schedule set before each step, clipping, a non-finite-loss stop,
throughput, MLflow logging from the main process, crash-safe checkpoints, exact mid-epoch resume,
and a clean stop on SIGTERM/SIGINT that writes a checkpoint first.

The loop does not wait for the device each step: metrics are summed on the device, and the
non-finite guard and the stop request are agreed across processes every `log_every` steps and
before every checkpoint (so no checkpoint holds a non-finite step).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from vitssl.engine.batches import DeviceFeed, to_model_input
from vitssl.engine.checkpoint import Checkpointer, load_checkpoint
from vitssl.engine.flops import peak_flops, train_flops_per_image
from vitssl.engine.lifetime import StopRequest
from vitssl.engine.plan import TrainingPlan, set_lr
from vitssl.engine.precision import cast_float_buffers, model_dtype
from vitssl.engine.zero_gather import gathered_parameters
from vitssl.tracking import MlflowRun
from vitssl.tracking.plots import close, curve_figure, draw


class NonFiniteLossError(RuntimeError):
    pass


class LoaderMismatchError(RuntimeError):
    """A data loader yielded more or fewer batches in an epoch than the plan says."""


@dataclass
class TrainerOptions:
    log_every: int
    grad_clip: float | None
    figure_every: int = 0  # epochs between figures of `figure_batch` (also after the last); 0 = never

    @classmethod
    def from_run(cls, run) -> TrainerOptions:
        return cls(run.log_every, run.grad_clip, run.figure_every)


class RunningMeans:
    """Sums of per-step metrics kept on the device; read (one sync) only when logged or saved."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().float() if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.count for k, v in self.sums.items()} if self.count else {}

    def to_dict(self) -> dict:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count}

    @classmethod
    def from_dict(cls, d: dict | None) -> RunningMeans:
        m = cls()
        if d:
            m.sums, m.count = dict(d["sums"]), d["count"]
        return m


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0  # optimizer steps done
    mlflow_run_id: str | None = None
    history: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    # The running means of the unfinished epoch and log window: carried through a resume so the
    # interrupted epoch's mean covers all its steps.
    epoch_means: RunningMeans = field(default_factory=RunningMeans)
    window_means: RunningMeans = field(default_factory=RunningMeans)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "mlflow_run_id": self.mlflow_run_id,
                "history": dict(self.history), "epoch_means": self.epoch_means.to_dict(),
                "window_means": self.window_means.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        s = cls(d["epoch"], d["step"], d.get("mlflow_run_id"))
        s.history.update({k: [tuple(p) for p in v] for k, v in d.get("history", {}).items()})
        s.epoch_means = RunningMeans.from_dict(d.get("epoch_means"))
        s.window_means = RunningMeans.from_dict(d.get("window_means"))
        return s


@dataclass
class Window:
    """The stretch of steps since the last synchronisation point."""

    bad: torch.Tensor  # a non-finite loss since the last check, on the device
    first_bad_step: int = -1
    started: float = field(default_factory=time.perf_counter)
    images: int = 0


@dataclass
class FitResult:
    state: TrainState
    checkpoint: Path | None
    interrupted: bool


class Trainer:
    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 plan: TrainingPlan, tracker: MlflowRun, checkpointer: Checkpointer, options: TrainerOptions,
                 figure_batch: dict | None = None):
        self.accelerator = accelerator
        # model FLOP utilisation in the log line when both are known (vitssl.engine.flops)
        self.flops_per_image, self.peak_flops = train_flops_per_image(model), peak_flops(accelerator.device)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.objective = accelerator.unwrap_model(self.model)  # for after_step
        self.input_dtype = model_dtype(self.model)
        cast_float_buffers(self.model, self.input_dtype)
        self.plan = plan
        self.tracker = tracker
        self.checkpointer = checkpointer
        self.options = options
        self.figure_batch = figure_batch
        self.state = TrainState()
        self.last_checkpoint: Path | None = None
        self.last_saved_step: int | None = None
        self.logged_through = -1  # steps up to here were logged before a resume: never log them twice

    # -- state ---------------------------------------------------------------------------------
    def resume_from(self, folder: Path) -> None:
        self.state = TrainState.from_dict(load_checkpoint(self.accelerator, folder))
        self.last_checkpoint, self.last_saved_step = folder, self.state.step

    def save(self) -> Path:
        self.last_checkpoint = self.checkpointer.save(self.accelerator, self.model, self.state.step,
                                                      self.state.to_dict())
        self.last_saved_step = self.state.step
        return self.last_checkpoint

    def _clip_gradients(self) -> dict[str, torch.Tensor]:
        """Clip; return the norm before clipping, left on the device (no host sync)."""
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed clipped inside backward; accelerate's clip_grad_norm_ would .item() its norm.
            norm = self.model.get_global_grad_norm()
            return {} if norm is None else {"grad_norm": norm}
        return {"grad_norm": self.accelerator.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)}

    # -- agreement across processes ------------------------------------------------------------
    def _agree(self, bad: torch.Tensor, stop: bool) -> tuple[bool, bool]:
        """(any rank saw a non-finite loss, any rank asked to stop): one sync for both."""
        flags = torch.stack([bad.float().to(self.accelerator.device),
                             torch.tensor(float(stop), device=self.accelerator.device)])
        if self.accelerator.num_processes > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _mean_across(self, values: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist(), strict=True))

    # -- loop: fit -> epochs -> micro-steps, with a synchronisation point every few steps -------------
    def fit(self) -> FitResult:
        sch, st = self.plan.schedule, self.state
        self.bar = tqdm(total=sch.total_steps, initial=st.step, disable=not self.accelerator.is_local_main_process,
                        desc="train", dynamic_ncols=True)
        self.window = Window(torch.zeros((), dtype=torch.bool, device=self.accelerator.device))
        with StopRequest() as stop:
            while st.step < sch.total_steps and st.epoch < sch.epochs:
                if self._train_one_epoch(stop):
                    self.bar.close()
                    return FitResult(st, self.last_checkpoint, True)
                self._after_epoch()
        if self.last_saved_step != st.step:
            self.save()
        self.bar.close()
        return FitResult(st, self.last_checkpoint, False)

    def _train_one_epoch(self, stop: StopRequest) -> bool:
        """The rest of the current epoch (mae's ``train_one_epoch``); True when a stop was requested and
        a checkpoint written."""
        acc, sch, st = self.accelerator, self.plan.schedule, self.state
        done_in_epoch = st.step - st.epoch * sch.steps_per_epoch
        planned = (sch.steps_per_epoch - done_in_epoch) * sch.grad_accum  # micro-batches to use
        expected = self.plan.batches_per_epoch - done_in_epoch * sch.grad_accum  # the loader's
        seen = 0
        self.model.train()
        batches = stop.interruptible(self.plan.make_loader(st.epoch, done_in_epoch))
        for batch in DeviceFeed(batches, acc.device, self.input_dtype):
            seen += 1
            if seen > expected:
                raise LoaderMismatchError(
                    f"the data loader yielded more than the {expected} batches planned for epoch "
                    f"{st.epoch} on process {acc.process_index}: refusing to merge epochs")
            if seen > planned:
                continue  # the remainder of an epoch that does not fill an accumulation step
            loss, metrics = self._micro_step(batch, first=(seen - 1) % sch.grad_accum == 0)
            if not acc.sync_gradients:
                continue
            self._count_step(loss, metrics)
            if self._sync_point(stop):
                return True
            if st.step >= sch.total_steps:
                break
        if stop.read_interrupted:
            self._stop_while_waiting()
            return True
        if st.step < sch.total_steps and seen != expected:
            raise LoaderMismatchError(
                f"the data loader ended epoch {st.epoch} after {seen} of the {expected} batches planned "
                f"on process {acc.process_index}: every process must get the planned equal batches")
        return False

    def _micro_step(self, batch: dict, first: bool) -> tuple[torch.Tensor, dict]:
        """Forward and backward of one micro-batch; the optimizer steps on the last of an accumulation."""
        acc, opts = self.accelerator, self.options
        if first:  # before any backward: DeepSpeed steps inside it
            set_lr(self.optimizer, self.plan.schedule.lr(self.state.step))
        with acc.accumulate(self.model):
            loss, metrics = self.model(batch)
            acc.backward(loss)
            if acc.sync_gradients and opts.grad_clip:
                metrics |= self._clip_gradients()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.window.images += next(iter(batch.values())).shape[0]
        return loss, metrics

    def _count_step(self, loss: torch.Tensor, metrics: dict) -> None:
        """An optimizer step is done: its metrics join the running means, on the device (no sync)."""
        st, window = self.state, self.window
        nonfinite = ~torch.isfinite(loss.detach())
        window.bad = window.bad | nonfinite
        if window.first_bad_step < 0 and self.accelerator.device.type == "cpu" and bool(nonfinite):
            window.first_bad_step = st.step  # free on CPU; on GPUs the sync point names the window
        st.step += 1
        self.objective.after_step(st.step, st.step / self.plan.schedule.total_steps)
        self.bar.update(1)
        values = {"loss": loss.detach(), **metrics}
        st.window_means.add(values)
        st.epoch_means.add(values)

    def _sync_point(self, stop: StopRequest) -> bool:
        """Every log_every steps, checkpoint and epoch end: the one place the processes wait for each other
        and the device. Raises on a non-finite loss; True when a stop was requested (checkpoint written)."""
        st, sch, window = self.state, self.plan.schedule, self.window
        epoch_done = st.step - st.epoch * sch.steps_per_epoch == sch.steps_per_epoch
        log_now = st.step % self.options.log_every == 0 or st.step == sch.total_steps
        save_now = bool(self.checkpointer.every) and st.step % self.checkpointer.every == 0
        if not (log_now or save_now or epoch_done or st.step >= sch.total_steps):
            return False
        any_bad, stop_now = self._agree(window.bad, stop.requested)
        if any_bad:
            where = f"step {window.first_bad_step}" if window.first_bad_step >= 0 else f"a step up to {st.step - 1}"
            raise NonFiniteLossError(
                f"non-finite loss at {where} (epoch {st.epoch}): recent means {st.window_means.means()}. "
                "Lower optim.lr, enable run.grad_clip, or use bf16 instead of fp16.")
        if log_now:
            self._log_window(time.perf_counter() - window.started, window.images)
            window.started, window.images = time.perf_counter(), 0
        if save_now:
            self.save()
        if stop_now:
            self.accelerator.print(f"stop requested: saving a checkpoint at step {st.step}")
            if self.last_saved_step != st.step:
                self.save()
        return stop_now

    def _after_epoch(self) -> None:
        """The epoch's means, figures and (without step checkpoints) its checkpoint, once it is complete."""
        st, sch = self.state, self.plan.schedule
        if st.step == (st.epoch + 1) * sch.steps_per_epoch:
            self._end_epoch()
            st.epoch += 1
            if st.step < sch.total_steps and not self.checkpointer.every:
                self.save()

    def _stop_while_waiting(self) -> None:
        """A stop request while the loader was blocked (a stalled source): save what one process can
        save alone; with several, the others are ended by the launcher and resume uses the last save."""
        st, acc = self.state, self.accelerator
        print(f"stop requested while waiting for data on process {acc.process_index} (step {st.step})", flush=True)
        if acc.num_processes == 1 and self.last_saved_step != st.step:
            self.save()


    def _log_window(self, elapsed: float, images: int) -> None:
        acc, st = self.accelerator, self.state
        logged = self._mean_across(st.window_means.means())
        st.window_means = RunningMeans()
        logged["images_per_s"] = images * acc.num_processes / max(elapsed, 1e-9)
        if self.flops_per_image and self.peak_flops:
            logged["mfu"] = logged["images_per_s"] * self.flops_per_image / (self.peak_flops * acc.num_processes)
        group = self.optimizer.param_groups[0]
        logged["lr"] = group["lr"] / group.get("lr_scale", 1.0)
        if acc.is_main_process:
            if st.step > self.logged_through:
                self.tracker.log_metrics(logged, st.step)
            st.history["loss"].append((st.step, logged["loss"]))
            st.history["images_per_s"].append((st.step, logged["images_per_s"]))
            self.bar.set_postfix(loss=f"{logged['loss']:.4f}", ips=f"{logged['images_per_s']:.0f}",
                                 **({"mfu": f"{logged['mfu']:.1%}"} if "mfu" in logged else {}))

    def _end_epoch(self) -> None:
        acc, st = self.accelerator, self.state
        means = self._mean_across(st.epoch_means.means())
        st.epoch_means = RunningMeans()
        epoch = st.epoch + 1
        every, last = self.options.figure_every, epoch == self.plan.schedule.epochs
        figures = self.figure_batch is not None and every and (epoch % every == 0 or last)
        if not acc.is_main_process:
            if figures:  # every process has the batch and joins the forward: ZeRO-3 gathers weights in it
                self._log_figures(epoch)
            return
        if st.step > self.logged_through:
            self.tracker.log_metrics({f"epoch_{k}": v for k, v in means.items()}, st.step)
        for k, v in means.items():
            st.history[f"epoch_{k}"].append((epoch, v))
        acc.print(f"epoch {epoch}/{self.plan.schedule.epochs} step {st.step}: "
                  + " ".join(f"{k}={v:.4f}" for k, v in sorted(means.items())))
        if figures:
            self._log_figures(epoch)

    def _log_figures(self, epoch: int) -> None:
        acc = self.accelerator
        model = acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        batch = to_model_input(self.figure_batch, acc.device, self.input_dtype)
        with gathered_parameters(acc, model), acc.autocast():
            figures = model.figures(batch)
        model.train(was_training)
        for name, rows in figures.items():
            if acc.is_main_process:
                fig = draw(rows)
                self.tracker.log_figure(fig, f"figures/epoch_{epoch:03d}_{name}")
                close(fig)

    def log_curves(self) -> None:
        if not self.accelerator.is_main_process:
            return
        fig = curve_figure({"loss": self.state.history.get("loss", [])}, title="training loss")
        self.tracker.log_figure(fig, "loss_curve.png")
        close(fig)
