"""The train recipe's typed config, composed from YAML presets and `key=value` overrides.

Layers, later ones winning: the recipe preset (configs/train.yaml), the task's preset if it
has one (configs/task/<task>.yaml), the arch's recipe preset if it has one
(configs/arch/<arch>.yaml), an experiment (configs/experiment/<name>.yaml, `--experiment`), then
the command line. Hydra composes the YAML; OmegaConf checks every key and value against the
dataclasses: `model` is typed by the family's config class, `task` by the task's registered one.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from xlm.data.task import TaskConfig
from xlm.data.tasks import task_config
from xlm.errors import XlmUserError
from xlm.registry import Family, get_task, list_tasks, unknown_name_message
from xlm.shipped import configs_dir


class ConfigError(XlmUserError, ValueError):
    """A config key or value the recipe cannot use; the message names it."""


@dataclass(kw_only=True)
class DataConfig:
    batch_size: int = 64  # global examples per micro-step, split evenly across ranks
    eval_batch_size: int = 256
    num_workers: int = 0  # dataloader worker processes per rank: collating map-style batches ahead of the step
    #                       (the same batches and data position as 0), or with task.streaming reading and tokenizing


@dataclass(kw_only=True)
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.1  # not applied to norms, biases and embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    schedule: str = "cosine"  # "cosine" | "constant" (both after linear warmup)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    cosine_cycles: float = 0.5  # cosine periods over the run (HF's num_cycles): 0.5 falls once to the floor
    decay_steps: int | None = None  # the step the cosine ends at, holding the floor after it; None = max_steps


@dataclass(kw_only=True)
class TrainerConfig:
    max_steps: int = 1000
    grad_accum_steps: int = 1
    eval_every_steps: int = 250  # 0 = only at the end
    checkpoint_every_steps: int = 250
    keep_last_checkpoints: int = 2  # the newest readable ones at or before the current step; 0 = keep all
    keep_best: bool = False  # also keep the checkpoint with the best best_metric (checkpoints/best.json)
    best_metric: str = "val_loss"  # a metric of the periodic evaluation, e.g. val_loss, val_exact_match
    best_mode: str | None = None  # "min" | "max"; None = "min" for a loss or nll, "max" for anything else
    log_every_steps: int = 10
    max_minutes: float | None = None  # wall-clock budget: stop, checkpoint and finish early
    ema_decay: float | None = None  # when set, evaluation and the exported model use the EMA
    compile: bool = False
    cpu_kernels: bool = True  # CPU: fused q/k/v projections and a compiled tanh GELU (xlm.nn.cpu.accelerate_training)
    autocast_dtype: str | None = None  # "bf16" | "fp16"; None = full precision
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    resume: bool = True  # continue from output_dir's last checkpoint when there is one
    resume_changes: str = "refuse"  # settings a resume may change from the checkpoint's (recorded in history.jsonl):
    #                                 "refuse" | "allow" | config keys separated by commas, e.g. "optim.lr,seed"
    progress_bar: bool = True  # a bar on a terminal; plain lines when stderr is a file or a pipe
    progress_every_seconds: float = 30.0  # the plain lines: one every this many seconds
    tensorboard: str = "auto"  # "auto": also log to TensorBoard when it is installed (pip install 'xlm[tb]');
    #                            "true": the same, with a warning when it is not; "false": metrics.jsonl only
    num_threads: int | None = None  # torch's CPU threads; None = torch's choice (see the warning on a busy host)
    on_nonfinite: str = "stop"  # a NaN/Inf loss or gradient: "stop" (raise, nothing saved) | "skip" (no update)
    max_skipped_steps: int = 10  # with "skip": stop after this many consecutive skipped steps
    # divergence guard (xlm.recipes.divergence): stop, nothing saved, when the median of the last
    # divergence_patience losses exceeds divergence_factor x the lowest median of divergence_window
    # consecutive losses (at least divergence_min_loss); pruning keeps the newest checkpoint from before the rise
    divergence_window: int = 50  # 0 turns the guard off
    divergence_factor: float = 3.0
    divergence_min_loss: float = 0.5  # nats per token: noise around a loss near zero is no divergence
    divergence_patience: int = 5
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass
    parallelism: str = "ddp"  # under torchrun: "ddp" (replicated weights) | "fsdp" (FSDP2: sharded weights,
    #                           gradients and optimizer state; sharded torch.distributed.checkpoint checkpoints)
    fsdp_param_dtype: str | None = None  # fsdp: "bf16" | "fp16" compute dtype (MixedPrecisionPolicy); None = fp32


TENSORBOARD_MODES = ("auto", "true", "false")


@dataclass(kw_only=True)
class TrainRecipeConfig:
    arch: str
    output_dir: str
    seed: int = 0
    # a model whose weights and network the run starts from (fine-tuning): a card name, a run or export dir, an
    # HF dir, a run's checkpoint by its path (xlm.recipes.init_from); None: a fresh init
    init_from: str | None = None
    task: TaskConfig = field(default_factory=TaskConfig)  # the task's registered config class when composed
    model: Any = None  # the family's config dataclass (typed when composed)
    sampler: Any = None  # the family's sampler config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        self.trainer.tensorboard = str(self.trainer.tensorboard).lower()  # YAML's false arrives as "False"
        checks = [
            (self.trainer.tensorboard in TENSORBOARD_MODES, "trainer.tensorboard", "'auto', 'true' or 'false'",
             self.trainer.tensorboard),
            (self.trainer.num_threads is None or self.trainer.num_threads >= 1, "trainer.num_threads",
             "null (torch's choice) or a positive integer", self.trainer.num_threads),
            (self.trainer.progress_every_seconds >= 0, "trainer.progress_every_seconds", "non-negative",
             self.trainer.progress_every_seconds),
            (self.optim.schedule in ("cosine", "constant"), "optim.schedule", "'cosine' or 'constant'",
             self.optim.schedule),
            (self.optim.cosine_cycles > 0, "optim.cosine_cycles", "positive (0.5: one fall to the floor)",
             self.optim.cosine_cycles),
            (self.optim.decay_steps is None or self.optim.decay_steps > self.optim.warmup_steps, "optim.decay_steps",
             f"null (the run's max_steps) or more than optim.warmup_steps={self.optim.warmup_steps}",
             self.optim.decay_steps),
            (self.trainer.autocast_dtype in (None, "bf16", "fp16"), "trainer.autocast_dtype",
             "null, 'bf16' or 'fp16'", self.trainer.autocast_dtype),
            (self.data.batch_size >= 1, "data.batch_size", "a positive integer", self.data.batch_size),
            (self.trainer.grad_accum_steps >= 1, "trainer.grad_accum_steps", "a positive integer",
             self.trainer.grad_accum_steps),
            (self.trainer.max_steps >= 1, "trainer.max_steps", "a positive integer", self.trainer.max_steps),
            (self.trainer.on_nonfinite in ("stop", "skip"), "trainer.on_nonfinite", "'stop' or 'skip'",
             self.trainer.on_nonfinite),
            (self.trainer.parallelism in ("ddp", "fsdp"), "trainer.parallelism", "'ddp' or 'fsdp'",
             self.trainer.parallelism),
            (self.trainer.fsdp_param_dtype in (None, "bf16", "fp16", "fp32"), "trainer.fsdp_param_dtype",
             "null, 'bf16', 'fp16' or 'fp32'", self.trainer.fsdp_param_dtype),
            (self.data.num_workers >= 0, "data.num_workers", "a non-negative integer", self.data.num_workers),
            (bool(self.trainer.resume_changes.strip()), "trainer.resume_changes",
             "'refuse', 'allow' or config keys separated by commas", self.trainer.resume_changes),
            (self.trainer.keep_last_checkpoints >= 0, "trainer.keep_last_checkpoints",
             "a non-negative integer (0 keeps every checkpoint)", self.trainer.keep_last_checkpoints),
            (self.trainer.best_mode in (None, "min", "max"), "trainer.best_mode", "null, 'min' or 'max'",
             self.trainer.best_mode),
            (not self.trainer.keep_best or self.trainer.eval_every_steps > 0, "trainer.eval_every_steps",
             "positive with trainer.keep_best=true (the best checkpoint is chosen at each evaluation)",
             self.trainer.eval_every_steps),
            (self.trainer.divergence_window >= 0, "trainer.divergence_window",
             "a non-negative integer (0 turns the divergence guard off)", self.trainer.divergence_window),
            (self.trainer.divergence_factor > 1, "trainer.divergence_factor", "greater than 1",
             self.trainer.divergence_factor),
            (self.trainer.divergence_min_loss >= 0, "trainer.divergence_min_loss", "non-negative",
             self.trainer.divergence_min_loss),
            (self.trainer.divergence_patience >= 1, "trainer.divergence_patience", "a positive integer",
             self.trainer.divergence_patience),
            *self._range_checks(),
        ]
        for ok, key, expected, got in checks:
            if not ok:
                raise ConfigError(f"{key} must be {expected}, got {got!r}")

    def _range_checks(self) -> list[tuple[bool, str, str, Any]]:
        """The numbers that torch or the loop would otherwise take into a traceback (a negative lr, a zero
        interval), a wrong run (an EMA decay past 1) or a silent one (val_loss 0.0 over no examples)."""
        optim, tc, task = self.optim, self.trainer, self.task
        eval_size, train_size = getattr(task, "eval_size", None), getattr(task, "train_size", None)
        return [
            (optim.lr >= 0, "optim.lr", "non-negative", optim.lr),
            (optim.weight_decay >= 0, "optim.weight_decay", "non-negative", optim.weight_decay),
            (0 <= optim.beta1 < 1, "optim.beta1", "in [0, 1)", optim.beta1),
            (0 <= optim.beta2 < 1, "optim.beta2", "in [0, 1)", optim.beta2),
            (optim.eps > 0, "optim.eps", "positive", optim.eps),
            (optim.grad_clip is None or optim.grad_clip > 0, "optim.grad_clip", "null (no clipping) or positive",
             optim.grad_clip),
            (optim.warmup_steps >= 0, "optim.warmup_steps", "a non-negative integer", optim.warmup_steps),
            (0 <= optim.min_lr_ratio <= 1, "optim.min_lr_ratio", "in [0, 1]", optim.min_lr_ratio),
            (self.data.eval_batch_size >= 1, "data.eval_batch_size", "a positive integer", self.data.eval_batch_size),
            (tc.eval_every_steps >= 0, "trainer.eval_every_steps", "a non-negative integer (0: only at the end)",
             tc.eval_every_steps),
            (tc.checkpoint_every_steps >= 1, "trainer.checkpoint_every_steps", "a positive integer",
             tc.checkpoint_every_steps),
            (tc.log_every_steps >= 1, "trainer.log_every_steps", "a positive integer", tc.log_every_steps),
            (tc.max_minutes is None or tc.max_minutes > 0, "trainer.max_minutes", "null (no budget) or positive",
             tc.max_minutes),
            (tc.ema_decay is None or 0 < tc.ema_decay < 1, "trainer.ema_decay", "null (no EMA) or in (0, 1)",
             tc.ema_decay),
            (tc.max_skipped_steps >= 1, "trainer.max_skipped_steps", "a positive integer", tc.max_skipped_steps),
            (eval_size is None or eval_size >= 1, "task.eval_size", "null (the whole split) or a positive integer",
             eval_size),
            (train_size is None or train_size >= 1, "task.train_size", "null (the whole split) or a positive integer",
             train_size),
        ]


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, DictConfig):
        return []
    keys = []
    for key in node.keys():
        path = f"{prefix}{key}"
        keys.append(path)
        keys.extend(_all_keys(node._get_node(key), path + "."))
    return keys


def _other_tasks_with(key: str, task: str) -> str:
    """' task.block_size is a setting of the text task.' when `key` is another task's setting."""
    head, _, name = key.partition(".")
    if head != "task" or not name:
        return ""
    owners = [t for t in list_tasks() if t != task
              and name.split(".")[0] in {f.name for f in dataclasses.fields(get_task(t).config_class)}]
    return f" {key} is a setting of the {', '.join(owners)} task, not of {task!r}." if owners else ""


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str, task: str,
             every_key: str = "Use --dump-config to see every key.") -> ConfigError:
    key = getattr(err, "full_key", None) or ""
    msg = (getattr(err, "msg", None) or str(err)).splitlines()[0]  # OmegaConf appends full_key/type lines
    if "not in struct" in str(err) or "Key '" in msg and "not in" in msg:
        close = difflib.get_close_matches(key, _all_keys(schema), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return ConfigError(f"unknown config key {key!r} (from {source}){hint}{_other_tasks_with(key, task)} "
                           f"{every_key}")
    return ConfigError(f"bad value for config key {key!r} (from {source}): {msg}")


def compose_yaml(task: str, arch: str, experiment: str | None, search_path: Sequence[Path] = ()) -> DictConfig:
    """Merge the recipe, task, arch and experiment YAML files with Hydra (the task's and the arch's
    presets only where they exist: a task or arch needs none)."""
    from hydra import compose, initialize_config_dir

    config_dir = configs_dir()
    dirs = [config_dir, *search_path]
    known = sorted({p.stem for d in dirs for p in (d / "experiment").glob("*.yaml")})
    if experiment and experiment not in known:
        raise ConfigError(unknown_name_message("experiment", experiment, known)
                          + f" (presets in {', '.join(str(d / 'experiment') for d in dirs)})")
    overrides = [f"+{group}={name}" for group, name in (("task", task), ("arch", arch))
                 if any((d / group / f"{name}.yaml").exists() for d in dirs)]
    if experiment:
        overrides.append(f"+experiment={experiment}")
    extra = [f"file://{d}" for d in search_path]
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        try:
            cfg = compose(config_name="train", overrides=overrides + ([f"hydra.searchpath={extra}"] if extra else []))
        except Exception as err:  # Hydra's errors in a preset: the first line names it
            raise ConfigError(f"cannot compose the config for task={task!r}, arch={arch!r}, experiment={experiment!r}: "
                              f"{str(err).splitlines()[0]}") from None
    return cfg


@dataclass(frozen=True, kw_only=True)
class ComposedConfig:
    """The recipe config, and which keys a layer set (so a value derived from the task never
    replaces one that a preset, the experiment or the command line pinned)."""

    config: TrainRecipeConfig
    pinned: Mapping[str, str]  # dotted key (every level: "model", "model.vocab_size") -> the last layer setting it


def parsed_override(item: str) -> Any:
    """One `key=value` of a command line as a config layer. A value left empty is refused: `init_from=$CKPT` with
    CKPT unset would otherwise mean null, and train from scratch."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-4)")
    key, _, value = item.partition("=")
    if not value.strip():
        raise ConfigError(f"override {item!r} has no value (an unset shell variable?); write {key}=null for none, "
                          f"or leave it out for the preset's")
    try:
        return OmegaConf.from_dotlist([item])
    except Exception as err:  # YAML parser errors for values such as "{0"
        raise ConfigError(f"cannot parse the override {item!r}: {str(err).splitlines()[0]}; quote a value that "
                          f"holds YAML punctuation, e.g. key='{{0'") from None


def build_config(*, family: Family, arch: str, task: str, output_dir: str, experiment: str | None = None,
                 overrides: Sequence[str] = ()) -> ComposedConfig:
    base = TrainRecipeConfig(arch=arch, output_dir=output_dir, model=family.archs.get(arch),
                             sampler=family.sampler_config_class(), task=task_config(task))
    schema = OmegaConf.structured(base)
    OmegaConf.set_struct(schema, True)
    from xlm.plugins import external_config_dirs

    presets = compose_yaml(task, arch, experiment, search_path=external_config_dirs())
    layers: list[tuple[str, Any]] = [("the YAML presets", presets)]
    for item in overrides:
        layer = parsed_override(item)
        layers.append((f"the command line ({item})", layer))
    merged = schema
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as err:
            raise _explain(err, schema, source, task) from None
    try:
        config: TrainRecipeConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, schema, "the merged config", task) from None
    except (ValueError, TypeError) as err:  # a config's own __post_init__ validation
        raise ConfigError(str(err)) from None
    pinned = {key: source for source, layer in layers for key in _all_keys(layer)}
    if config.task.name != task:
        raise ConfigError(f"task.name={config.task.name!r} (from {pinned['task.name']}) is not the task being "
                          f"trained, {task!r}; choose the task with --task")
    return ComposedConfig(config=config, pinned=pinned)


def override_task(config: TaskConfig, items: Sequence[str]) -> TaskConfig:
    """`config` with `task.KEY=VALUE` items set, typed and checked as train's command line sets them (for xlm
    eval, which scores on the model's own task settings unless told otherwise)."""
    schema = OmegaConf.create({"task": OmegaConf.structured(config)})
    OmegaConf.set_struct(schema, True)
    keys = ", ".join(f"task.{f.name}" for f in dataclasses.fields(config) if f.name != "name")
    merged = schema
    for item in items:
        try:
            merged = OmegaConf.merge(merged, parsed_override(item))
        except OmegaConfBaseException as err:
            raise _explain(err, schema, f"the command line ({item})", config.name,
                           every_key=f"The {config.name!r} task's keys: {keys}.") from None
    try:
        overridden: TaskConfig = OmegaConf.to_object(merged)["task"]  # type: ignore[index]
    except (ValueError, TypeError) as err:  # the task config's own __post_init__ validation
        raise ConfigError(str(err)) from None
    if overridden.name != config.name:
        raise ConfigError(f"task.name={overridden.name!r} is not the task being scored, {config.name!r}; choose the "
                          f"task with --task")
    return overridden


def config_to_yaml(config: TrainRecipeConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
