"""`init_from=SOURCE`: a run that starts from another model's weights instead of a fresh init (fine-tuning).

SOURCE is anything the other commands load: a card name, a run or export dir, an HF dir, a run's checkpoint
(RUN/checkpoints/step_000000500). The run trains the source's network: its model config, vocabulary size
included, with the `model.KEY=VALUE` settings of the command line on top (the --arch preset's model settings
do not apply), on a task read with the source's tokenizer. The --arch names the recipe (optimizer, schedule,
sampler) and must be of the source's family. A resumed run continues from its checkpoint; `init_from` stays a
setting of the run that a resume may not change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from xlm.data.task import Task
from xlm.data.tokenizers import Tokenizer
from xlm.errors import InvalidValueError
from xlm.registry import Family

from .checkpoint import checkpoint_dirs
from .config import ComposedConfig, ConfigError
from .model_source import CHECKPOINTS, UnfinishedRunError, load_for_command
from .run_history import InitialWeights

__all__ = ["InitSource", "load_init_source", "source_network", "weights_digest"]


@dataclass(kw_only=True)
class InitSource:
    """What a run takes from its `init_from` model. Its weights are taken once (`take_weights`), so that the run
    does not hold a second copy of the model while it trains."""

    record: InitialWeights  # for the run's history
    model_config: Any  # the family's config dataclass
    tokenizer: Tokenizer
    weights: Mapping[str, torch.Tensor] = field(repr=False)  # on the CPU; empty once taken

    @property
    def label(self) -> str:  # what was loaded, for the run's banner: "card mdlm_star_easy", "runs/x"
        return self.record["loaded"]

    def take_weights(self) -> Mapping[str, torch.Tensor]:
        weights, self.weights = self.weights, {}
        return weights


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in key order (each one's name, dtype, shape and bytes): which weights a run
    started from, whatever card or path named them."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_init_source(name: str, family: Family, arch: str) -> InitSource:
    if not name.strip():
        raise InvalidValueError("init_from is empty; give a card name or a path, or null for a fresh start")
    try:
        loaded = load_for_command(name, device="cpu")
    except UnfinishedRunError:
        saved = checkpoint_dirs(Path(name).expanduser() / CHECKPOINTS)
        if not saved:
            raise
        raise UnfinishedRunError(f"init_from={name!r} is a run that has not finished; start from one of its "
                                 f"checkpoints, e.g. init_from={saved[-1][1]} (the newest), or finish it "
                                 f"first") from None
    if loaded.family.name != family.name:
        raise InvalidValueError(f"init_from={name!r} is a model of the {loaded.family.name} family, and --arch "
                                f"{arch} trains {family.name}: give an arch of the {loaded.family.name} family "
                                f"(`xlm models` lists them)")
    weights = loaded.model.state_dict()
    record = InitialWeights(init_from=name, loaded=loaded.label, weights_sha256=weights_digest(weights))
    return InitSource(record=record, model_config=loaded.model.config, tokenizer=loaded.tokenizer, weights=weights)


def source_network(source: InitSource, composed: ComposedConfig, task: Task) -> Any:
    """The model config the run trains: the source's, with the command line's model settings over it, once the
    task is known to read the source's vocabulary and to fit its context."""
    init_from = composed.config.init_from
    if task.tokenizer.spec() != source.tokenizer.spec():
        raise InvalidValueError(f"init_from={init_from!r} reads another vocabulary than task {task.name!r}'s "
                                f"tokenizer; fine-tune it on a task with its tokenizer (text: leave task.tokenizer "
                                f"unset, and the model's own reads the corpus)")
    given = {key.removeprefix("model."): getattr(composed.config.model, key.removeprefix("model."))
             for key, layer in composed.pinned.items()
             if key.startswith("model.") and key.count(".") == 1 and layer.startswith("the command line")}
    try:
        model = replace(source.model_config, **given)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"the command line's model settings do not fit init_from's model: {err}") from None
    if getattr(model, "max_seq_len", task.max_seq_len) < task.max_seq_len:
        raise ConfigError(f"init_from={init_from!r} holds {model.max_seq_len} positions, fewer than task "
                          f"{task.name!r}'s longest row ({task.max_seq_len} tokens); choose shorter rows")
    return model
