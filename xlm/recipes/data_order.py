"""The order the training data is read in, and the data position a checkpoint saves so that a
resumed run reads exactly what the interrupted one would have read next.

A map-style dataset is read through `EpochBatches`: global batches whose order is a pure function
of (seed, epoch), so the position is one (epoch, index) pair, the same on every rank, whoever
collates the batches (`xlm.recipes.collated_batches`, in this process or in dataloader workers). With a
streaming task (`task.streaming=true`) every rank reads its own row stream
(`xlm.data.streaming.RowStream`), so the position is every rank's stream position, gathered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError
from .distributed import DistEnv, all_gather_object


class EpochBatches:
    """Global batches of example indices in a seeded order per epoch; each rank takes its slice.

    The order depends only on (seed, epoch), so the same global batches are seen whatever the
    number of ranks, and a saved (epoch, index) position resumes exactly.
    """

    def __init__(self, num_examples: int, global_batch: int, seed: int, env: DistEnv) -> None:
        if num_examples < global_batch:
            raise ConfigError(f"data.batch_size={global_batch} is larger than the training set "
                              f"({num_examples} examples); choose a data.batch_size (times "
                              f"trainer.grad_accum_steps) of at most {num_examples}, or a larger training set "
                              f"(task.train_size)")
        self.num_examples, self.global_batch, self.seed, self.env = num_examples, global_batch, seed, env
        self.per_epoch = num_examples // global_batch
        self.epoch, self.index = 0, 0
        self._order: tuple[int, list[int]] | None = None

    def positions(self) -> Iterator[tuple[int, int]]:
        """The (epoch, index) of every batch from the current position on; `self` does not move
        (a reader may run ahead of the batches taken, `take` moves it)."""
        epoch, index = self.epoch, self.index
        while True:
            if index >= self.per_epoch:
                epoch, index = epoch + 1, 0
            yield epoch, index
            index += 1

    def indices_at(self, epoch: int, index: int) -> list[int]:
        """This rank's slice of global batch `index` of `epoch`."""
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.num_examples, generator=g).tolist())
        start = index * self.global_batch
        batch = self._order[1][start : start + self.global_batch]
        local = self.global_batch // self.env.world_size
        return batch[self.env.rank * local : (self.env.rank + 1) * local]

    def take(self, epoch: int, index: int) -> None:
        """Batch (epoch, index) was trained on: the saved position is the one after it."""
        self.epoch, self.index = epoch, index + 1

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def data_position(batches: Any, *, streaming: bool, env: DistEnv) -> dict[str, Any]:
    """What a checkpoint keeps of where `batches` (EpochBatches, or this rank's RowStream when
    `streaming`) has got to; collective when streaming."""
    if not streaming:
        return batches.state()  # global: the same on every rank
    # every rank reads its own shards: keep each rank's position
    return {"streaming": True, "ranks": all_gather_object(batches.state(), env)}


def restore_data_position(batches: Any, position: dict[str, Any], *, streaming: bool, env: DistEnv,
                          checkpoint: Path) -> None:
    """Moves `batches` to the `position` saved in `checkpoint`; ConfigError when this run reads its
    data in a way that position cannot continue."""
    if bool(position.get("streaming")) != streaming:
        saved, now = ("a streaming", "a map-style") if not streaming else ("a map-style", "a streaming")
        raise ConfigError(f"checkpoint {checkpoint} holds {saved} data position but this run reads {now} training "
                          f"set; resume with the same task.streaming, or start a new --output-dir")
    if not streaming:
        batches.load_state(position)
        return
    ranks = position["ranks"]
    if len(ranks) != env.world_size:
        raise ConfigError(f"checkpoint {checkpoint} holds the streaming data positions of {len(ranks)} ranks; resume "
                          f"it with {len(ranks)} processes (this run has {env.world_size}) to continue the same data "
                          f"streams, or start a new --output-dir")
    batches.load_state(ranks[env.rank])
