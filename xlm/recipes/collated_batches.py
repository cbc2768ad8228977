"""Map-style training batches collated ahead of the step, in `data.num_workers` dataloader worker
processes (or in the training process with 0), so that the step never waits on collation.

The batches and the saved data position are the same whatever the number of workers. Workers read
ahead, but the position a checkpoint keeps is `EpochBatches`' after the last batch the trainer
*took*, so a resume starts at the first batch not trained on (batches read ahead are read again).
Collation may draw random numbers (MLM masks, ILM drops): each micro-batch draws them from torch's
CPU generator seeded by (seed, epoch, index, rank, micro-batch), which makes a batch a pure
function of its position wherever it is collated, and leaves the training process's RNG to the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .data_order import EpochBatches

if TYPE_CHECKING:
    import datasets

Collate = Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]
Step = tuple[int, int, list[int], list[dict[str, Any]]]  # epoch, index, this rank's row indices, micro-batches


def collation_seed(seed: int, epoch: int, index: int, rank: int, micro: int) -> int:
    """The seed of one micro-batch's collation: stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}/{rank}/{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class _StepReader(torch.utils.data.Dataset):
    """Item (epoch, index): that step's micro-batches for this rank, read and collated."""

    def __init__(self, order: EpochBatches, dataset: datasets.Dataset, collate: Collate, accum: int,
                 set_step: Callable[[int], None] | None) -> None:
        self.order, self.dataset, self.collate, self.accum, self.set_step = order, dataset, collate, accum, set_step

    def __getitem__(self, position: tuple[int, int]) -> Step:
        epoch, index = position
        if self.set_step is not None:  # a collation that follows a curriculum, told the step this batch is for
            self.set_step(epoch * self.order.per_epoch + index)
        indices = self.order.indices_at(epoch, index)
        micro = len(indices) // self.accum
        batches = []
        for i in range(self.accum):
            rows = self.dataset[indices[i * micro : (i + 1) * micro]]
            examples = [dict(zip(rows, values)) for values in zip(*rows.values())]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(collation_seed(self.order.seed, epoch, index, self.order.env.rank, i))
                batches.append(self.collate(examples))
        return epoch, index, indices, batches


def _identity(item: Any) -> Any:
    return item


class CollatedBatches:
    """This rank's collated micro-batches, step after step; `state()`/`load_state()` are the data
    position (`EpochBatches`')."""

    def __init__(self, order: EpochBatches, dataset: datasets.Dataset, collate: Collate, *, accum: int,
                 num_workers: int, pin_memory: bool = False, set_step: Callable[[int], None] | None = None) -> None:
        """`set_step(step)`, when given, runs before each step's collation, in whichever process collates it
        (a worker holds its own copy of the unit): the step a batch is for follows from its position."""
        self.order, self.num_workers, self.pin_memory = order, num_workers, pin_memory
        self._reader = _StepReader(order, dataset, collate, accum, set_step)
        self._iter: Iterator[Step] | None = None
        self._last: tuple[int, int, list[int]] | None = None

    def _open(self) -> Iterator[Step]:
        positions = self.order.positions()
        if self.num_workers == 0:
            return map(self._reader.__getitem__, positions)
        return iter(torch.utils.data.DataLoader(self._reader, batch_size=None, sampler=positions,
                                                num_workers=self.num_workers, collate_fn=_identity,
                                                pin_memory=self.pin_memory))

    def next(self) -> list[dict[str, Any]]:
        if self._iter is None:
            self._iter = self._open()
        epoch, index, indices, batches = next(self._iter)
        self.order.take(epoch, index)
        self._last = (epoch, index, indices)
        return batches

    def describe(self) -> str:
        """Where the last batch taken came from (for error messages)."""
        if self._last is None:
            return f"data epoch {self.order.epoch}, before batch {self.order.index}"
        epoch, index, indices = self._last
        return f"data epoch {epoch}, batch {index}, rows {indices[:8]}{'...' if len(indices) > 8 else ''}"

    def state(self) -> dict[str, int]:
        return self.order.state()

    def load_state(self, state: dict[str, int]) -> None:
        self.close()  # batches read ahead from the old position are dropped
        self.order.load_state(state)

    def close(self) -> None:
        """Stops the dataloader workers (a later `next()` starts new ones at the current position)."""
        self._iter = None
