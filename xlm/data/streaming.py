"""Streaming training rows: documents read lazily shard by shard, tokenized and packed on the fly,
with a data position that resumes exactly.

Who reads what. The corpus is a list of shards (one per local file, or the shards of an HF
streaming dataset). Every rank's dataloader worker is one *consumer*: consumer
``rank * W + worker`` of ``world_size * W`` (``W = max(1, data.num_workers)``). Each pass
(epoch) over the corpus visits the shards in a seeded order, ``perm(seed, epoch)``, and splits
them between the consumers by the rule of ``datasets.distributed.split_dataset_by_node``:
when the number of shards is a multiple of the number of consumers, consumer ``c`` reads the
shards ``perm[c::C]``; otherwise every consumer reads every shard and keeps the documents
``d`` of shard ``s`` with ``(d + s) % C == c``. Either way the consumers' documents are
disjoint and together cover the corpus once per pass. (We shard the shard list ourselves
instead of calling ``split_dataset_by_node`` so that the position below is ours to save.)

Packing. Each kept document becomes ``[BOS] tokens [EOS]`` (``DocumentFrame.packed``) and is
appended to the consumer's buffer; every ``block_size`` tokens of the buffer make one row
(``blocks_from_documents`` semantics, with the tail carried over to the next document instead
of dropped). Without packing each document is one row, truncated to ``block_size`` with its
[EOS] kept.

The position of a consumer after a row is ``{epoch, shard_pos, doc, rows, buffer}``: the pass,
the index into that pass's shard list, how many raw rows of that shard were read, how many
rows this pass has produced, and the tokens waiting in the packing buffer. A rank's position
is its consumers' positions plus how many rows it has taken (which fixes the next worker in
the dataloader's round-robin). Saved in every checkpoint, it restores the stream exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from xlm.data.framing import DocumentFrame
from xlm.errors import InvalidValueError


class DocumentSource(Protocol):
    """A sharded corpus: `documents(shard, start)` yields one item per raw row of the shard from
    row `start` on: the document's text, or None for a row that is not a training document
    (empty, or held out), so that row indices stay those of the shard."""

    num_shards: int

    def documents(self, shard: int, start: int) -> Iterator[str | None]: ...


def shard_assignment(num_shards: int, consumer: int, num_consumers: int, seed: int,
                     epoch: int) -> tuple[list[int], bool]:
    """(the shards consumer `consumer` reads in pass `epoch`, whether it keeps only every
    `num_consumers`-th document of them)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_shards, generator=g).tolist()
    if num_shards % num_consumers == 0:
        return order[consumer::num_consumers], False
    return order, True


def new_position() -> dict[str, Any]:
    return {"epoch": 0, "shard_pos": 0, "doc": 0, "rows": 0, "buffer": []}


class PackedRows:
    """One consumer's infinite stream of rows, each with the position just after it."""

    def __init__(self, source: DocumentSource, *, consumer: int, num_consumers: int, seed: int,
                 encode: Callable[[str], list[int]], frame: DocumentFrame, block_size: int, packing: bool,
                 rows_per_pass: int | None = None) -> None:
        if block_size < 3:
            raise InvalidValueError(f"task.block_size must be >= 3 ([BOS], a token, [EOS]), got {block_size}")
        if source.num_shards < 1:
            raise InvalidValueError("the streaming corpus has no shards")
        self.source, self.consumer, self.num_consumers, self.seed = source, consumer, num_consumers, seed
        self.encode, self.frame = encode, frame
        self.block_size, self.packing, self.rows_per_pass = block_size, packing, rows_per_pass

    def rows(self, position: dict[str, Any] | None = None) -> Iterator[tuple[list[int], dict[str, Any]]]:
        pos = dict(position or new_position())
        epoch, shard_pos, start, rows = int(pos["epoch"]), int(pos["shard_pos"]), int(pos["doc"]), int(pos["rows"])
        buffer = [int(t) for t in pos["buffer"]]
        bs, c, n = self.block_size, self.consumer, self.num_consumers

        def at(doc: int) -> dict[str, Any]:
            return {"epoch": epoch, "shard_pos": shard_pos, "doc": doc, "rows": rows, "buffer": list(buffer)}

        def full() -> bool:  # task.train_size: every pass stops after its first rows
            return self.rows_per_pass is not None and rows >= self.rows_per_pass

        while True:
            order_epoch = epoch if self.rows_per_pass is None else 0  # train_size: the same rows every pass
            shards, split_docs = shard_assignment(self.source.num_shards, c, n, self.seed, order_epoch)
            fresh, kept = shard_pos == 0 and start == 0, 0
            while shard_pos < len(shards) and not full():
                shard = shards[shard_pos]
                while self.packing and len(buffer) >= bs and not full():  # a saved buffer holding whole rows
                    row, buffer = buffer[:bs], buffer[bs:]
                    rows += 1
                    yield row, at(start)
                if full():
                    break
                for doc, text in enumerate(self.source.documents(shard, start), start):
                    if text is None or (split_docs and (doc + shard) % n != c):
                        continue
                    kept += 1
                    ids = self.encode(text)
                    if not self.packing:
                        rows += 1
                        yield self.frame.row(ids, bs), at(doc + 1)
                    else:
                        buffer.extend(self.frame.packed(ids))
                        while len(buffer) >= bs and not full():
                            row, buffer = buffer[:bs], buffer[bs:]
                            rows += 1
                            yield row, at(doc + 1)
                    if full():
                        break
                else:
                    shard_pos, start = shard_pos + 1, 0
            if full():
                buffer = []
            elif fresh and not kept:
                raise InvalidValueError(f"streaming consumer {c} of {n} found no training document in a whole pass "
                                        f"over the corpus ({self.source.num_shards} shards); check "
                                        f"task.data_files/task.dataset and task.text_column, or use fewer processes "
                                        f"or data.num_workers")
            epoch, shard_pos, start, rows = epoch + 1, 0, 0, 0


class _WorkerRows(torch.utils.data.IterableDataset):
    """The dataloader side: worker `w` plays consumer role `(w + offset) % W` of its rank."""

    def __init__(self, factory: Callable[[int, int], PackedRows], rank: int, world_size: int,
                 positions: list[dict[str, Any]], offset: int) -> None:
        self.factory, self.rank, self.world_size = factory, rank, world_size
        self.positions, self.offset = positions, offset

    def __iter__(self) -> Iterator[tuple[list[int], int, dict[str, Any]]]:
        info = torch.utils.data.get_worker_info()
        workers = len(self.positions)
        role = ((info.id if info else 0) + self.offset) % workers
        stream = self.factory(self.rank * workers + role, self.world_size * workers)
        for row, position in stream.rows(self.positions[role]):
            yield row, role, position


def _identity(item: Any) -> Any:
    return item


class RowStream:
    """One rank's training rows, read in this process (`num_workers=0`) or by dataloader workers
    (tokenizing in parallel), with a position that `state()` saves and `load_state()` restores."""

    def __init__(self, factory: Callable[[int, int], PackedRows], *, rank: int, world_size: int,
                 num_workers: int) -> None:
        if num_workers < 0:
            raise InvalidValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.factory, self.rank, self.world_size, self.num_workers = factory, rank, world_size, num_workers
        self.positions = [new_position() for _ in range(max(1, num_workers))]
        self.taken = 0
        self._iter: Iterator[tuple[list[int], int, dict[str, Any]]] | None = None
        self._loader: Any = None

    def _open(self) -> Iterator[tuple[list[int], int, dict[str, Any]]]:
        workers = len(self.positions)
        dataset = _WorkerRows(self.factory, self.rank, self.world_size, [dict(p) for p in self.positions],
                              offset=self.taken % workers)
        if self.num_workers == 0:
            return iter(dataset)
        self._loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                                   collate_fn=_identity)
        return iter(self._loader)

    def next_rows(self, n: int) -> list[list[int]]:
        if self._iter is None:
            self._iter = self._open()
        out = []
        for row, role, position in itertools.islice(self._iter, n):
            self.positions[role] = position
            self.taken += 1
            out.append(row)
        return out

    def state(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "taken": self.taken, "positions": [dict(p) for p in self.positions]}

    def load_state(self, state: dict[str, Any]) -> None:
        if int(state["num_workers"]) != self.num_workers:
            raise InvalidValueError(f"the checkpoint's streaming data position was saved with data.num_workers="
                                    f"{state['num_workers']}; resume with the same value (now {self.num_workers}) to "
                                    f"continue the same data stream")
        self.close()
        self.taken = int(state["taken"])
        self.positions = [dict(p) for p in state["positions"]]

    def describe(self) -> str:
        here = ", ".join(f"epoch {p['epoch']} shard #{p['shard_pos']} doc {p['doc']}" for p in self.positions)
        return f"rank {self.rank} stream after {self.taken} rows: {here}"

    def close(self) -> None:
        self._iter, self._loader = None, None
