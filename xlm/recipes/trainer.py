"""The training loop every family shares: optimizer, schedule, accumulation, AMP, compile,
EMA, logging, periodic evaluation, checkpoints and exact resume, under torch.distributed.

Exact resume rests on three things: a data order that is a pure function of (seed, epoch),
a saved data position, and saved RNG states; evaluation never touches the training RNG.

Data: a map-style dataset indexed by `EpochBatches` (global batches, the same whatever the
number of ranks) and collated ahead in `data.num_workers` processes (`CollatedBatches`), or with
a streaming task (`task.streaming=true`) each rank's own row stream
(`xlm.data.streaming.RowStream`), whose per-rank position is gathered into every checkpoint.

Parallelism under torchrun: DDP (`trainer.parallelism=ddp`), or FSDP2 (`fsdp`: `fully_shard` on
every transformer block and the root, checkpoints sharded through torch.distributed.checkpoint,
the exported model.safetensors gathered to rank 0). Either way the loss is the per-token mean
over the whole global batch: each rank sums its token losses, the gradients are averaged over
ranks by DDP/FSDP and rescaled by world_size / global token count.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parallel import DistributedDataParallel

from xlm.data.task import Task
from xlm.errors import PathExistsError, XlmError, XlmWarning
from xlm.io import commit_dir, new_temp_dir, replace_file, write_file
from xlm.nn.cpu import accelerate_training
from xlm.registry import Family
from xlm.run_dir import write_run_dir

from .activation_checkpointing import checkpoint_activations
from .banner import start_banner
from .best_checkpoint import BestCheckpointTracker, best_mode
from .checkpoint import (CheckpointError, checkpoint_dirs, checkpoint_name, clear_interrupted_writes,
                         is_sharded_checkpoint, load_checkpoint, load_sharded, load_trainer_state, prune_checkpoints,
                         save_checkpoint, save_sharded)
from .collated_batches import CollatedBatches
from .config import ConfigError, TrainRecipeConfig, config_to_yaml
from .data_order import EpochBatches, data_position, restore_data_position
from .divergence import DivergenceGuard
from .distributed import (DistEnv, all_gather_object, all_reduce_sum, apply_fsdp, barrier, broadcast_flag,
                          broadcast_object)
from .ema import ModelEma
from .evaluation import EvaluationStopped, evaluate_loss, evaluate_predictions
from .interrupts import StopRequests
from .metrics_log import MetricsLog
from .optim import apply_group_settings, build_adamw, group_settings, lr_schedule, param_groups
from .init_from import InitSource
from .resume_changes import ConfigChange, check_checkpoint_fits, check_resume_config, recorded_config
from .progress import Eta, Progress, duration
from .rng import rng_state, set_rng_state
from .run_history import HISTORY_FILE, append_segment, new_segment
from .run_record import RunRecord

if TYPE_CHECKING:
    import datasets

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingInterrupted(XlmError):
    """Raised after a signal: a checkpoint was saved, the run can be resumed (`detail` says what was
    cut short), or the run had finished and its run dir is complete (`checkpoint` None)."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None, *, detail: str = "",
                 output_dir: Path | None = None) -> None:
        self.signum = signum
        if checkpoint is None:
            super().__init__(f"stopped by {signal.Signals(signum).name} after the run finished at step {step}; "
                             f"{output_dir} is complete")
            return
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}{detail}; checkpoint saved in "
                         f"{checkpoint}; run the same command again to resume")


class StepAbandoned(XlmError):
    """A stop signal between two micro-batches of a step: the step was undone (gradients dropped, data
    position and RNG rewound), to be redone by the resumed run."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"{done} of {total} micro-batches")
        self.done, self.total = done, total


class UnstableTrainingError(XlmError, ArithmeticError):
    """A training loss gone wrong; raised before anything is saved, so the checkpoints are as they were."""


class NonFiniteLossError(UnstableTrainingError, FloatingPointError):
    """A NaN/Inf loss or gradient."""


class TrainingDivergedError(UnstableTrainingError):
    """A finite loss far above the run's own range (the divergence guard, xlm.recipes.divergence)."""


class Trainer:
    """One training run: `Trainer(...)` builds the model, optimizer and data; `run()` trains,
    checkpoints, resumes and leaves the run dir. `command` (the arguments that started it) goes
    into the run's history."""

    def __init__(self, config: TrainRecipeConfig, family: Family, task: Task, env: DistEnv, *,
                 command: Sequence[str] = (), init: InitSource | None = None) -> None:
        self.config, self.family, self.task, self.env = config, family, task, env
        self.init = init  # the weights a fresh start begins from (init_from), else the family's init
        self.command = list(command)
        if config.data.batch_size % env.world_size:
            fitting = max(env.world_size, config.data.batch_size // env.world_size * env.world_size)
            raise ConfigError(f"data.batch_size={config.data.batch_size} must be divisible by the number of "
                              f"processes ({env.world_size}); e.g. data.batch_size={fitting}")
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.model, self.unit, self.fsdp = self._build_model()
        self.optimizer, self.scheduler, self.ema = self._build_optimizer()
        self.streaming, self.train_ds, self.val_ds, self.batches = self._build_data()
        self.train_model = self._wrap_model()
        self.autocast_dtype = AUTOCAST_DTYPES.get(config.trainer.autocast_dtype or "")
        self.step, self.tokens_seen, self.train_seconds = 0, 0, 0.0
        self.skipped_in_a_row = 0
        self.pending_eval = False  # the evaluation of this step was cut short by a stop signal: redone on resume
        self.stops = StopRequests(announce=False, under_torchrun=False)  # installed by run()
        self.progress_terminal = False  # whether run() shows a bar (then the evaluations show theirs)
        self.resumed_from: Path | None = None  # the checkpoint this segment continues
        self.config_changes: list[ConfigChange] = []  # from that checkpoint's config to this run's
        tc = config.trainer
        self.guard = DivergenceGuard(window=tc.divergence_window, factor=tc.divergence_factor,
                                     min_loss=tc.divergence_min_loss, patience=tc.divergence_patience)
        self.best = BestCheckpointTracker(root=self.checkpoint_dir, metric=tc.best_metric,
                                          mode=best_mode(tc.best_metric, tc.best_mode)) if tc.keep_best else None

    # ----------------------------------------------------------------- setup

    def _build_model(self) -> tuple[torch.nn.Module, Any, bool]:
        """The family's model, seeded (identical initial weights on every rank), its train unit, and
        whether the model is sharded with FSDP (then before the optimizer sees the parameters)."""
        tc, env = self.config.trainer, self.env
        torch.manual_seed(self.config.seed)
        model = self.family.factory(self.config.model, device=env.device)
        if self.init is not None:  # a resume then loads its checkpoint over them
            weights = self.init.take_weights()
            check_checkpoint_fits(model, weights, checkpoint=f"init_from={self.config.init_from!r}",
                                  advice="leave out the command line's model settings that change its shapes")
            model.load_state_dict(weights, strict=True)
        accelerate_training(model, enabled=tc.cpu_kernels)  # CPU training kernels (xlm.nn.cpu), before wrapping
        unit = self.family.unit_factory(model, self.task.tokenizer, self.config.sampler)
        if tc.activation_checkpointing:
            checkpoint_activations(model)
        # FSDP needs a process group; one process trains unsharded whatever trainer.parallelism says
        fsdp = tc.parallelism == "fsdp" and env.enabled
        if tc.parallelism == "fsdp" and not env.enabled:
            print("note: trainer.parallelism=fsdp in a single process trains unsharded", file=sys.stderr, flush=True)
        if fsdp:
            apply_fsdp(model, env, param_dtype=tc.fsdp_param_dtype)
        return model, unit, fsdp

    def _build_optimizer(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, ModelEma | None]:
        """AdamW, its learning-rate schedule, and the EMA of the weights when trainer.ema_decay is set."""
        optim, tc = self.config.optim, self.config.trainer
        optimizer = build_adamw(param_groups(self.model, optim.weight_decay), optim, device=self.env.device,
                                sharded=self.fsdp)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(optim, tc.max_steps))
        ema = ModelEma(self.model, tc.ema_decay) if tc.ema_decay else None
        return optimizer, scheduler, ema

    def _build_data(self) -> tuple[bool, datasets.Dataset | None, datasets.Dataset, Any]:
        """(whether training streams, the training set or None when it streams, the validation set,
        the training batches: CollatedBatches over the training set, or this rank's row stream)."""
        config, task, env = self.config, self.task, self.env
        streaming = bool(getattr(task, "streaming", False))
        train_ds = None if streaming else task.dataset("train").select_columns(self._train_columns(task))
        val = task.dataset("validation")
        self.val_total = len(val)
        limit = config.task.eval_size
        val_ds = val if limit is None or limit >= len(val) else val.select(range(limit))
        batches: Any
        if streaming:
            batches = task.train_stream(rank=env.rank, world_size=env.world_size,  # type: ignore[attr-defined]
                                        num_workers=config.data.num_workers, seed=config.seed)
        else:
            accum = config.trainer.grad_accum_steps
            order = EpochBatches(len(train_ds), config.data.batch_size * accum, config.seed, env)
            batches = CollatedBatches(order, train_ds, self.unit.collate_train, accum=accum,
                                      num_workers=config.data.num_workers, pin_memory=env.device.type == "cuda",
                                      set_step=getattr(self.unit, "set_training_step", None))
        return streaming, train_ds, val_ds, batches

    @staticmethod
    def _train_columns(task: Task) -> list[str]:
        return ["prompt_ids", "target_ids"] if task.is_seq2seq else ["input_ids"]

    def _wrap_model(self) -> torch.nn.Module:
        """The module the train step calls: the model under DDP when several processes train it
        unsharded, compiled when trainer.compile is set."""
        wrapped: torch.nn.Module = self.model
        if self.env.enabled and not self.fsdp:
            wrapped = DistributedDataParallel(self.model, device_ids=[self.env.device.index]
                                              if self.env.device.type == "cuda" else None)
        return torch.compile(wrapped) if self.config.trainer.compile else wrapped

    # ----------------------------------------------------------------- loop

    def run(self) -> dict[str, Any]:
        tc, env = self.config.trainer, self.env
        if not tc.resume and env.is_main and any(self.checkpoint_dir.glob("step_*")):
            raise PathExistsError(f"{self.checkpoint_dir} already has checkpoints and trainer.resume=false; "
                                  f"choose another --output-dir or remove them")
        self._clear_interrupted_writes()
        if tc.resume:
            self._resume()
        record = RunRecord(self.output_dir, command=self.command, device=env.device) if env.is_main else None
        if record is not None:
            fresh_from = self.init if self.resumed_from is None else None
            segment = new_segment(command=self.command, resumed_from=self.resumed_from, step=self.step,
                                  world_size=env.world_size, resume_changes=tc.resume_changes,
                                  changes=self.config_changes,
                                  initial_weights=None if fresh_from is None else fresh_from.record)
            append_segment(self.output_dir, segment)
            replace_file(self.output_dir / "config.yaml", config_to_yaml(self.config))
            record.start(segment)
        log = MetricsLog(self.output_dir, enabled=env.is_main, tensorboard=tc.tensorboard, resume_step=self.step)
        if env.is_main:
            print("\n".join(start_banner(self)) + ("\n  tensorboard: " + str(self.output_dir / "tensorboard")
                                                  if log.writer is not None else ""), file=sys.stderr, flush=True)
        status, error = "failed", None
        under_torchrun = env.enabled or "TORCHELASTIC_RUN_ID" in os.environ
        try:
            with StopRequests(announce=env.is_main, under_torchrun=under_torchrun) as self.stops:
                summary = self._train(log)
            status = "finished"
            return summary
        except TrainingInterrupted:
            status = "interrupted"
            raise
        except KeyboardInterrupt:
            status = "stopped at once"
            raise
        except BaseException as err:
            error = f"{type(err).__name__}: {err}"
            raise
        finally:
            log.close()
            self.batches.close()  # dataloader workers
            if record is not None:
                record.end(status, self.step, error)

    def _train(self, log: MetricsLog) -> dict[str, Any]:
        """The loop, then the final evaluation and the run dir; stops at the safe point after a signal."""
        tc, env = self.config.trainer, self.env
        progress = Progress(desc="train", total=tc.max_steps, initial=self.step,
                            enabled=tc.progress_bar and env.is_main, every_s=tc.progress_every_seconds)
        self.progress_terminal = progress.terminal
        eta = Eta()
        budget_s = tc.max_minutes * 60 if tc.max_minutes else None
        self.stops.where = self._stop_point(eta)
        self.model.train()
        try:
            if self.pending_eval:  # the evaluation a stop signal cut short, before training goes on
                if self._periodic_evaluation(log, progress, eta) and self.best is not None and env.is_main:
                    self.best.publish()
                self._save()  # records that it was done (and the best it found)
                if broadcast_flag(self.stops.requested, env):
                    raise TrainingInterrupted(self.stops.signum or signal.SIGINT, self.step,
                                              self.checkpoint_dir / checkpoint_name(self.step))
            while self.step < tc.max_steps:
                started = time.perf_counter()
                try:
                    stats = self._train_step()
                except StepAbandoned as cut:
                    raise TrainingInterrupted(self.stops.signum or signal.SIGINT, self.step, self._save_once(),
                                              detail=f" (step {self.step + 1} was cut short after {cut} and will be "
                                                     f"redone)") from None
                seconds = time.perf_counter() - started
                self.train_seconds += seconds
                eta.add_step(seconds)
                self.stops.where = self._stop_point(eta)
                tps = stats["tokens"] / max(seconds, 1e-9)
                progress.update(self.step, {"loss": f"{stats['loss']:.4f}", "tok/s": f"{tps:,.0f}",
                                            "eta": self._eta(eta, budget_s)})
                if self.step % tc.log_every_steps == 0 or self.step == 1:
                    log.log(self.step, "train", {**stats, "tokens_per_s": tps, "tokens_seen": self.tokens_seen})
                new_best = False
                if tc.eval_every_steps and self.step % tc.eval_every_steps == 0 and self.step < tc.max_steps:
                    new_best = self._periodic_evaluation(log, progress, eta)
                out_of_time = budget_s is not None and self.train_seconds >= budget_s
                stop = broadcast_flag(self.stops.requested or out_of_time, env)
                if self.step % tc.checkpoint_every_steps == 0 or stop or new_best:
                    self._save()
                if new_best and self.best is not None and env.is_main:
                    self.best.publish()
                if stop and self.stops.signum is not None:
                    raise TrainingInterrupted(self.stops.signum, self.step,
                                              self.checkpoint_dir / checkpoint_name(self.step))
                if stop:
                    break
            checkpoint = self._save_once()
        finally:
            progress.close()
        self.stops.where = "the final evaluation"
        if broadcast_flag(self.stops.requested, env):  # during the last checkpoint: stop before evaluating
            raise TrainingInterrupted(self.stops.signum or signal.SIGINT, self.step, checkpoint,
                                      detail=" (before the final evaluation)")
        if env.is_main and not progress.terminal and tc.progress_bar:
            print(f"final evaluation on {len(self.val_ds):,} validation rows", file=sys.stderr, flush=True)
        try:
            summary = self._finish(log)
        except EvaluationStopped:
            raise TrainingInterrupted(self.stops.signum or signal.SIGINT, self.step, checkpoint,
                                      detail=" (the final evaluation was cut short)") from None
        if broadcast_flag(self.stops.requested, env):  # after the evaluation: the run dir was written whole
            raise TrainingInterrupted(self.stops.signum or signal.SIGINT, self.step, None,
                                      output_dir=self.output_dir)
        return summary

    def _stop_point(self, eta: Eta) -> str:
        """Where a first stop signal stops the training loop, as its message says it: with how long a
        step takes when that is long enough to wonder (a large model on a CPU: minutes)."""
        if self._can_abandon_steps():
            return "after this micro-batch"
        per_step = eta.seconds_per_step()
        return f"after this step (steps take about {duration(per_step)})" if per_step and per_step >= 10 else \
            "after this step"

    def _eta(self, eta: Eta, budget_s: float | None) -> str:
        """The time left: the steps and evaluations to come at the steady-state pace, within the budget."""
        tc = self.config.trainer
        every = tc.eval_every_steps
        evals = (tc.max_steps - 1) // every - self.step // every if every else 0  # periodic ones still to come
        left = eta.seconds_left(tc.max_steps - self.step, max(evals, 0) + 1)
        if left is None:
            return "after warm-up"
        if budget_s is not None:
            left = min(left, max(budget_s - self.train_seconds, 0.0) + (eta.eval_seconds or 0.0))
        return duration(left)

    def _periodic_evaluation(self, log: MetricsLog, progress: Progress, eta: Eta) -> bool:
        """Evaluates (rank 0, or every rank under FSDP, where each forward pass is collective) unless a
        stop signal cuts it short; whether the step is the best so far."""
        env, new_best = self.env, False
        if env.is_main or self.fsdp:
            self.stops.where = "after this evaluation batch"
            started = time.perf_counter()
            try:
                metrics = self.evaluate()
            except EvaluationStopped:
                metrics = None
            self.stops.where = self._stop_point(eta)
            self.pending_eval = metrics is None
            if metrics is not None:
                eta.eval_seconds = time.perf_counter() - started
                log.log(self.step, "val", {**metrics, "train_seconds": self.train_seconds})
                progress.note(f"step {self.step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                new_best = self.best is not None and self.best.offer(self.step, metrics)
        barrier(env)
        return self.best is not None and broadcast_flag(new_best, env)

    def _save_once(self) -> Path:
        """This step's checkpoint, written unless it is there already."""
        path = self.checkpoint_dir / checkpoint_name(self.step)
        return path if path.is_dir() else self._save()

    # ----------------------------------------------------------------- steps

    def _train_step(self) -> dict[str, float]:
        """One optimizer step over grad_accum_steps micro-batches; per-token mean over all ranks."""
        accum = self.config.trainer.grad_accum_steps
        rewind = (self.batches.state(), rng_state()) if self._can_abandon_steps() else None
        micro_batches, data_where = self._micro_batches()
        if hasattr(self.unit, "set_training_step"):  # a unit whose objective follows a curriculum
            self.unit.set_training_step(self.step)
        nll_sum = torch.zeros((), device=self.env.device)
        num_tokens = torch.zeros((), device=self.env.device)
        input_tokens = 0
        for i, collated in enumerate(micro_batches):
            if rewind is not None and i and broadcast_flag(self.stops.requested, self.env):
                self.optimizer.zero_grad(set_to_none=True)
                self.batches.load_state(rewind[0])
                set_rng_state(rewind[1])
                raise StepAbandoned(i, accum)
            batch = self._to_device(collated)
            input_tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
            last = i == accum - 1
            ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
            if self.fsdp:  # inner micro-steps: no reduce-scatter, keep the gathered weights for the next one
                self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
                self.model.set_reshard_after_backward(last)  # type: ignore[operator]
            elif self.env.enabled and not last and hasattr(self.train_model, "no_sync"):
                ctx = self.train_model.no_sync()
            with ctx, self._autocast():
                out = self.unit.loss(self.train_model, batch)
                weighted = out["loss"].float() * out["num_tokens"]
            weighted.backward()
            nll_sum += weighted.detach()
            num_tokens += out["num_tokens"].detach().float()
        global_tokens = all_reduce_sum(num_tokens, self.env)
        if float(global_tokens) == 0:
            raise ValueError(f"step {self.step + 1}: the batch has no target tokens")
        # DDP/FSDP averaged the gradients over ranks; turn the sum of per-rank sums into a global mean
        scale = self.env.world_size / float(global_tokens)
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        loss = float(all_reduce_sum(nll_sum, self.env)) / float(global_tokens)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   self.config.optim.grad_clip or float("inf"))
        if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor norm over the sharded gradients
            grad_norm = grad_norm.full_tensor()
        if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
            where = f"at step {self.step + 1} ({data_where})"
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_in_a_row += 1
            if self.config.trainer.on_nonfinite == "stop" or \
                    self.skipped_in_a_row > self.config.trainer.max_skipped_steps:
                raise NonFiniteLossError(f"non-finite training loss {loss} / gradient norm {float(grad_norm)} {where}; "
                                         f"nothing was saved: {self._checkpoints_note()} "
                                         f"(trainer.on_nonfinite=skip skips such steps)")
            print(f"warning: skipped the update {where}: loss {loss}, gradient norm {float(grad_norm)}",
                  file=sys.stderr, flush=True)
            self.step += 1
            self.scheduler.step()
            return {"loss": loss, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                    "tokens": 0, "skipped": 1.0}
        if (limit := self.guard.check(self.step + 1, loss)) is not None:
            self.optimizer.zero_grad(set_to_none=True)
            raise self._diverged(limit)
        self.skipped_in_a_row = 0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        tokens = int(all_reduce_sum(torch.tensor(float(input_tokens), device=self.env.device), self.env))
        self.tokens_seen += tokens
        return {"loss": loss, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                "tokens": tokens}

    def _diverged(self, limit: float) -> TrainingDivergedError:
        tc, guard = self.config.trainer, self.guard
        good = self._last_good_checkpoint()
        kept = (f"{self.checkpoint_dir / checkpoint_name(good)} is the newest checkpoint from before the loss "
                f"rose (kept)" if good is not None else
                f"no checkpoint in {self.checkpoint_dir} is from before the loss rose")
        return TrainingDivergedError(
            f"training diverged at step {self.step + 1}: the median of the last {tc.divergence_patience} losses, "
            f"{guard.recent_median():.4g}, is above {limit:.4g} (trainer.divergence_factor={tc.divergence_factor:g} "
            f"x the run's lowest median of trainer.divergence_window={tc.divergence_window} losses, at least "
            f"trainer.divergence_min_loss={tc.divergence_min_loss:g}); nothing was saved, {kept}; lower optim.lr, "
            f"or raise trainer.divergence_factor (trainer.divergence_window=0 turns the guard off)")

    def _last_good_checkpoint(self) -> int | None:
        """The step of the newest checkpoint whose weights the divergence guard judged good (pruning keeps it)."""
        if self.config.trainer.divergence_window <= 0:
            return None
        return max((step for step, _ in checkpoint_dirs(self.checkpoint_dir) if step <= self.guard.good_step),
                   default=None)

    def _checkpoints_note(self) -> str:
        """What the checkpoints dir holds, as seen from a step whose loss went wrong: whether a checkpoint
        holds the weights that gave the loss, and the newest one before them."""
        own = self.checkpoint_dir / checkpoint_name(self.step)
        earlier = [path.name for step, path in checkpoint_dirs(self.checkpoint_dir) if step < self.step]
        if not own.is_dir() and not earlier:
            return f"no checkpoint in {self.checkpoint_dir} predates this step"
        holds = f"{own} holds the weights that gave this loss" if own.is_dir() else \
            f"no checkpoint in {self.checkpoint_dir} holds the weights that gave this loss"
        return holds + (f", {earlier[-1]} predates them" if earlier else ", no checkpoint predates them")

    def _can_abandon_steps(self) -> bool:
        """Whether a stop signal may cut a step short between its micro-batches: the step is then undone,
        which needs a data position to rewind (not a stream) and unsharded gradients (not FSDP)."""
        return self.config.trainer.grad_accum_steps > 1 and not self.streaming and not self.fsdp

    def _micro_batches(self) -> tuple[Iterable[dict[str, Any]], str]:
        """This rank's grad_accum_steps collated micro-batches for one optimizer step, and where they
        came from (for error messages)."""
        if not self.streaming:
            return self.batches.next(), self.batches.describe()
        accum = self.config.trainer.grad_accum_steps
        local = self.config.data.batch_size * accum // self.env.world_size
        where = f"before this step: {self.batches.describe()}"
        rows = self.batches.next_rows(local)
        micro = local // accum
        # collated as the step reaches each one, as this rank's RNG stream always had it
        return (self.unit.collate_train([{"input_ids": r} for r in rows[i * micro : (i + 1) * micro]])
                for i in range(accum)), where

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.env.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.autocast_dtype)

    def evaluate(self, *, progress: bool = False) -> dict[str, float]:
        """Validation loss and prediction metrics (rank 0), without touching the training RNG.
        EvaluationStopped when a stop signal came (checked before each batch; together under FSDP)."""
        ema = self.ema.swapped_into(self.model) if self.ema else contextlib.nullcontext()
        devices = [self.env.device] if self.env.device.type == "cuda" else []
        stop = (lambda: broadcast_flag(self.stops.requested, self.env)) if self.fsdp else \
            (lambda: self.stops.requested)
        with torch.random.fork_rng(devices=devices), ema:
            torch.manual_seed(self.config.seed)
            bs = self.config.data.eval_batch_size
            metrics = {f"val_{k}": v for k, v in evaluate_loss(
                self.unit, self.val_ds, batch_size=bs, device=self.env.device, progress=progress, stop=stop).items()}
            if self.task.is_seq2seq:
                means, _ = evaluate_predictions(self.unit, self.task, self.val_ds, batch_size=bs,
                                                device=self.env.device, progress=progress, stop=stop)
                metrics.update({f"val_{k}": v for k, v in means.items()})
        return metrics

    # ----------------------------------------------------------------- checkpoints

    def _save(self) -> Path:
        state = self._trainer_state()  # collective: every rank takes part
        path = self.checkpoint_dir / checkpoint_name(self.step)
        keep_last = self.config.trainer.keep_last_checkpoints
        keep = self.best.protected() if self.best is not None else set()
        if self.guard.good_step < self.step - 1:  # the guard doubts the latest weights: keep the newest good ones
            keep |= {step for step in [self._last_good_checkpoint()] if step is not None}
        if self.fsdp:
            # every rank writes its shards into one temp dir; rank 0 completes it and renames it into place
            tmp = broadcast_object(new_temp_dir(path) if self.env.is_main else None, self.env)
            save_sharded(tmp, self._sharded_state())
            barrier(self.env)
            if self.env.is_main:
                write_file(tmp / "trainer_state.pt", lambda f: torch.save(state, f))
                commit_dir(tmp, path)
                prune_checkpoints(self.checkpoint_dir, keep_last, current_step=self.step, keep=keep)
        elif self.env.is_main:
            save_checkpoint(self.checkpoint_dir, self.step, model_state=self.model.state_dict(),
                            ema_state=self.ema.shadow if self.ema else None, trainer_state=state,
                            keep_last=keep_last, keep=keep)
        barrier(self.env)
        return path

    def _clear_interrupted_writes(self) -> None:
        """Rank 0 cleans up after checkpoint writes that a crash cut short (the run holds its dir)."""
        if self.env.is_main and (done := clear_interrupted_writes(self.checkpoint_dir)):
            print(f"note: {'; '.join(done)} in {self.checkpoint_dir} (left by an interrupted checkpoint write)",
                  file=sys.stderr, flush=True)
        barrier(self.env)

    def _trainer_state(self) -> dict[str, Any]:
        rng_states = all_gather_object(rng_state(), self.env)  # every rank's RNG: each resumes its own stream
        state = {"step": self.step, "tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                 "scheduler": self.scheduler.state_dict(),
                 "data_position": data_position(self.batches, streaming=self.streaming, env=self.env),
                 "rng": rng_states, "world_size": self.env.world_size,
                 "divergence": self.guard.state_dict(), "best": self.best.best if self.best else None,
                 "pending_eval": self.pending_eval}
        state["config"] = recorded_config(self.config)  # what a resume compares its own config with
        if self.fsdp:  # the optimizer state is sharded like the parameters: saved with them
            state["sharded"], state["has_ema"] = True, self.ema is not None
        else:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def _sharded_state(self) -> dict[str, Any]:
        """Model, optimizer (and EMA) state dicts whose tensors are the live (sharded) ones."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {"model": model_state, "optimizer": optim_state}
        if self.ema is not None:
            state["ema"] = self.ema.shadow
        return state

    def _resume(self) -> None:
        """Continues from the newest checkpoint every rank can read; unreadable newer ones are
        reported and skipped. The config's optimizer settings win over the checkpoint's."""
        self._touched = False
        settings = group_settings(self.optimizer)
        for step, path in reversed(checkpoint_dirs(self.checkpoint_dir)):
            try:
                state = self._load(path)
                failed = False
            except CheckpointError as err:
                warnings.warn(f"skipping checkpoint at step {step}: {err}", XlmWarning, stacklevel=2)
                failed = True
            self._touched = self._touched or not failed
            if broadcast_flag(failed, self.env):  # any rank failed: all fall back together
                continue
            self.scheduler.load_state_dict(state["scheduler"])
            apply_group_settings(self.optimizer, self.scheduler, settings)
            restore_data_position(self.batches, state["data_position"], streaming=self.streaming, env=self.env,
                                  checkpoint=path)
            self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
            self.train_seconds = float(state["train_seconds"])
            self.pending_eval = bool(state.get("pending_eval", False))
            if "divergence" in state:  # checkpoints written before the guard have none
                self.guard.load_state_dict(state["divergence"])
            if self.best is not None and self.best.restore(state.get("best")) and self.env.is_main:
                self.best.publish()  # best.json may name a checkpoint of the steps after this one
            rng_states = state["rng"]
            if len(rng_states) == self.env.world_size:
                set_rng_state(rng_states[self.env.rank])
            self.resumed_from = path
            if self.env.is_main:
                print(f"resumed from {path} (step {self.step})", flush=True)
            return
        if broadcast_flag(self._touched, self.env):  # the weights are half-restored: do not train from them
            raise CheckpointError(f"no checkpoint in {self.checkpoint_dir} could be restored on every rank (see the "
                                  f"warnings above); check that every rank sees the same files, or move the "
                                  f"checkpoints away to start over")

    def _load(self, path: Path) -> dict[str, Any]:
        """Loads one checkpoint into the model, optimizer and EMA; returns its trainer state.
        CheckpointError when a file is unreadable (nothing is changed for the plain layout); a
        ConfigError when this run's config differs from the checkpoint's in what it may not change."""
        if is_sharded_checkpoint(path):
            from torch.distributed.checkpoint.state_dict import set_state_dict

            state = load_trainer_state(path)
            self._check_config(state, path)
            live = self._sharded_state()
            if self.ema is None or not state.get("has_ema", True):
                live.pop("ema", None)
            self._touched = True  # a failed sharded load may have filled some tensors already
            load_sharded(path, live)  # collective; any sharding: DCP reshards to this run's layout
            set_state_dict(self.model, self.optimizer, model_state_dict=live["model"],
                           optim_state_dict=live["optimizer"])
            return state
        if self.fsdp:
            raise ConfigError(f"checkpoint {path} was written without FSDP (model.safetensors); resume it with "
                              f"trainer.parallelism=ddp, or start a new --output-dir")
        model_state, ema_state, state = load_checkpoint(path)
        self._check_config(state, path)
        check_checkpoint_fits(self.model, model_state, checkpoint=path)
        self.model.load_state_dict(model_state, strict=True)
        if self.ema is not None and ema_state is not None:
            self.ema.shadow = {k: v.to(self.env.device) for k, v in ema_state.items()}
        self.optimizer.load_state_dict(state["optimizer"])
        return state

    def _check_config(self, state: dict[str, Any], path: Path) -> None:
        if "config" not in state and self.env.is_main:
            print(f"note: checkpoint {path} keeps no config (an earlier xlm wrote it); this run's settings are not "
                  f"compared with the ones it was trained with", file=sys.stderr, flush=True)
        self.config_changes = check_resume_config(state.get("config"), self.config, checkpoint=path,
                                                  history=self.output_dir / HISTORY_FILE)

    # ----------------------------------------------------------------- finishing

    def _finish(self, log: MetricsLog) -> dict[str, Any]:
        summary: dict[str, Any] = {"step": self.step, "tokens_seen": self.tokens_seen,
                                   "train_seconds": round(self.train_seconds, 2),
                                   "train_tokens_per_s": self.tokens_seen / max(self.train_seconds, 1e-9)}
        if self.fsdp:
            return self._finish_sharded(log, summary)
        stopped = False
        if self.env.is_main:
            try:
                final = self.evaluate(progress=self.progress_terminal)
            except EvaluationStopped:
                stopped = True
            else:
                log.log(self.step, "val", {**final, "train_seconds": self.train_seconds})
                summary.update(final)
                if self.best is not None and self.best.offer(self.step, final):  # the last checkpoint is this step's
                    self.best.publish()
                ema = self.ema.swapped_into(self.model) if self.ema else contextlib.nullcontext()
                with ema:
                    self._write_run_dir(self.model, summary)
        if broadcast_flag(stopped, self.env):  # collective: the other ranks wait here for rank 0
            raise EvaluationStopped("the final evaluation was cut short")
        return summary

    def _finish_sharded(self, log: MetricsLog, summary: dict[str, Any]) -> dict[str, Any]:
        """FSDP: every rank evaluates (forward passes gather the weights), then the full state dict is
        gathered to rank 0's CPU memory and exported as one model.safetensors."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        final = self.evaluate(progress=self.progress_terminal)
        log.log(self.step, "val", {**final, "train_seconds": self.train_seconds})
        summary.update(final)
        if self.best is not None and self.best.offer(self.step, final) and self.env.is_main:
            self.best.publish()  # the last checkpoint is this step's
        with self.ema.swapped_into(self.model) if self.ema else contextlib.nullcontext():
            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.env.is_main:
            with torch.random.fork_rng(devices=[]):
                plain = self.family.factory(self.config.model, device=torch.device("cpu"))
            plain.load_state_dict(full, strict=True)
            self._write_run_dir(plain, summary)
        barrier(self.env)
        return summary

    def _write_run_dir(self, model: torch.nn.Module, summary: dict[str, Any]) -> None:
        """The weights, config.json and metrics.json, which land together: a second stop signal waits."""
        with self.stops.deferred():
            write_run_dir(self.output_dir, model=model, family=self.family.name, arch=self.config.arch,
                          model_config=self.config.model, sampler_config=self.config.sampler,
                          tokenizer=self.task.tokenizer, task=self.task.name,
                          train_config=asdict(self.config), metrics=summary)
