"""What a resumed run may change. Each checkpoint keeps the full resolved config it was trained
with; on resume, every setting that decides the trained weights (model, optimizer, schedule, data,
task, seed, batch, precision) must match it, unless the user allows the change with
`trainer.resume_changes` (then the run's history records it). Settings that only change how a run
is watched, saved or placed are free, and so is extending `trainer.max_steps`.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from xlm.errors import ConversionError
from xlm.registry import families

from .checkpoint import CheckpointError
from .config import ConfigError, TrainRecipeConfig

# settings that never change the trained weights: logging, evaluation, checkpoint cadence and
# retention, time budget, where and on what the run computes
FREE_KEYS = frozenset({
    "output_dir", "data.num_workers", "data.eval_batch_size",
    "trainer.log_every_steps", "trainer.eval_every_steps", "trainer.checkpoint_every_steps",
    "trainer.keep_last_checkpoints", "trainer.max_minutes", "trainer.progress_bar", "trainer.tensorboard",
    "trainer.progress_every_seconds", "trainer.num_threads",
    "trainer.device", "trainer.parallelism", "trainer.resume", "trainer.resume_changes",
    # which checkpoints are kept, and when a run that goes wrong is stopped, change no weights it trains
    "trainer.keep_best", "trainer.best_metric", "trainer.best_mode", "trainer.divergence_window",
    "trainer.divergence_factor", "trainer.divergence_min_loss", "trainer.divergence_patience",
})
REFUSE, ALLOW_ALL = "refuse", "allow"


class ResumeConfigError(ConfigError):
    """A resume whose config differs from its checkpoint's in settings that change the result."""


@dataclass(frozen=True, kw_only=True)
class ConfigChange:
    key: str
    before: Any  # the checkpoint's value
    after: Any  # this run's value

    def __str__(self) -> str:
        return f"{self.key}: {self.before!r} -> {self.after!r}"

    @property
    def changes_result(self) -> bool:
        if self.key == "trainer.max_steps":  # training further is what a resume is for; stopping earlier is not
            return not (isinstance(self.after, int) and isinstance(self.before, int) and self.after > self.before)
        return self.key not in FREE_KEYS


def recorded_config(config: TrainRecipeConfig) -> str:
    """The config as a checkpoint keeps it: JSON, which the weights-only checkpoint reader takes."""
    return json.dumps(asdict(config), default=str)


def _flat(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[ConfigChange]:
    """Every setting whose value differs. A key only one side has (a setting added or removed by
    another xlm version) has no value to compare, and is left out."""
    before, after = _flat(recorded), _flat(current)
    return [ConfigChange(key=k, before=before[k], after=after[k]) for k in sorted(before.keys() & after.keys())
            if before[k] != after[k]]


def _allowed(config: TrainRecipeConfig, known: set[str]) -> set[str] | None:
    """The keys `trainer.resume_changes` allows to change; None for all of them."""
    value = config.trainer.resume_changes.strip()
    if value == ALLOW_ALL:
        return None
    if value == REFUSE:
        return set()
    keys = {k.strip() for k in value.split(",") if k.strip()}
    for key in sorted(keys - known):
        close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"trainer.resume_changes names {key!r}, which is not a config key{hint} (it takes "
                          f"'{REFUSE}', '{ALLOW_ALL}', or config keys separated by commas)")
    return keys


def check_resume_config(recorded: str | None, config: TrainRecipeConfig, *, checkpoint: Path,
                        history: Path) -> list[ConfigChange]:
    """The changes from the checkpoint's config (`recorded`, None for a checkpoint that kept none)
    to this run's; ResumeConfigError naming those that change the result and are not allowed, and
    CheckpointError when the record is not a config (a damaged checkpoint, read no further)."""
    if recorded is None:
        return []
    try:
        saved = json.loads(recorded)
    except (TypeError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {checkpoint}: the config it keeps in trainer_state.pt is not a JSON "
                              f"object; the checkpoint is damaged")
    current = json.loads(recorded_config(config))
    changes = config_changes(saved, current)
    before, after = families.family_of_arch(str(saved.get("arch"))), families.family_of_arch(config.arch)
    if before is not None and before != after:
        raise ResumeConfigError(f"checkpoint {checkpoint} holds family {before}'s arch {saved['arch']!r}; family "
                                f"{after}'s {config.arch!r} cannot continue it "
                                f"(trainer.resume_changes does not reach across families). Choose another "
                                f"--output-dir, or rerun with --arch {saved['arch']}")
    allowed = _allowed(config, set(_flat(current)))
    refused = [c for c in changes if c.changes_result and allowed is not None and c.key not in allowed]
    if refused:
        keys = ",".join(c.key for c in refused)
        raise ResumeConfigError(
            f"checkpoint {checkpoint} was trained with other settings, and resuming would change the result: "
            f"{'; '.join(map(str, refused))}. Rerun with the checkpoint's values, choose another --output-dir, "
            f"or allow the change with trainer.resume_changes={keys} (or =allow), which {history} then records")
    return changes


def check_checkpoint_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], *, checkpoint: Path | str,
                          advice: str = "resume with the checkpoint's model settings, or choose another --output-dir",
                          ) -> None:
    """ConversionError (one line) listing every key of the checkpoint's weights that this run's model
    lacks, has of another shape, or has in addition: a changed model config, never a raw traceback."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    wrong = [(k, shape, expected[k]) for k, shape in shapes.items() if k in expected and shape != expected[k]]
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if wrong or missing or unexpected:
        raise ConversionError(f"its weights do not fit the model this config builds ({advice})", missing=missing,
                              unexpected=unexpected,
                              wrong_shapes=wrong, source=checkpoint, target="this config's model")
