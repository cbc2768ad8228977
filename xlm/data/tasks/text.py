"""Language modelling on a text corpus: local files or an HF dataset, tokenized into blocks.

Each document becomes ``[BOS] tokens [EOS]``. With packing, documents are concatenated and cut
into rows of exactly ``block_size`` tokens (a batch of documents' tail shorter than a block is
dropped, as HF's run_clm does); without it, each document is one row, truncated to
``block_size`` (its [EOS] kept). Rows are ``{"input_ids": [...]}``: every family's LM collator
reads them.

Splits: the source's own ``validation``/``test`` splits when it has them, otherwise disjoint
held-out slices of ``train`` (``held_out_fraction`` each, chosen by the task seed).
Tokenized splits are cached under ``$XLM_CACHE_DIR/text`` keyed by the source, the tokenizer,
the block layout and the seed; when no tokenizer is given, a SentencePiece model is trained on
the training split and cached the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import datasets

from xlm.data.disk_cache import cached_dataset, default_cache_root, quiet_datasets
from xlm.data.tokenizers import Tokenizer

#: Bumped whenever the tokenized layout changes; part of every cache key.
CACHE_FORMAT_VERSION = 1
SPLITS = ("train", "validation", "test")
_BUILDER_BY_SUFFIX = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv",
                      ".parquet": "parquet"}


@dataclass(frozen=True, kw_only=True)
class TextSource:
    data_files: str | None = None  # comma-separated local files or globs (.txt: one document per line)
    dataset: str | None = None  # an HF dataset name or a local dataset dir
    dataset_config: str | None = None
    text_column: str = "text"
    held_out_fraction: float = 0.05
    seed: int = 42

    def __post_init__(self) -> None:
        if (self.data_files is None) == (self.dataset is None):
            raise ValueError("the text task reads either task.data_files=PATH[,PATH...] or task.dataset=NAME; "
                             f"got data_files={self.data_files!r}, dataset={self.dataset!r}")
        if not 0.0 < self.held_out_fraction < 0.5:
            raise ValueError(f"task.held_out_fraction must be in (0, 0.5), got {self.held_out_fraction}")

    def files(self) -> list[str]:
        """The data files, globs expanded, each checked to exist."""
        import glob

        out: list[str] = []
        for pattern in (p.strip() for p in (self.data_files or "").split(",") if p.strip()):
            matches = sorted(glob.glob(os.path.expanduser(pattern)))
            if not matches:
                raise FileNotFoundError(f"task.data_files: no file matches {pattern!r}")
            out += matches
        suffixes = {Path(f).suffix for f in out}
        unknown = suffixes - set(_BUILDER_BY_SUFFIX)
        if unknown or len({_BUILDER_BY_SUFFIX[s] for s in suffixes - unknown}) > 1:
            raise ValueError(f"task.data_files must all be one kind of {sorted(_BUILDER_BY_SUFFIX)}; got {sorted(suffixes)}")
        return out

    def fingerprint(self) -> str:
        """What the raw splits depend on: file contents (hashed) or the dataset's name and config."""
        h = hashlib.sha256(json.dumps([self.dataset, self.dataset_config, self.text_column, self.held_out_fraction,
                                       self.seed]).encode())
        if self.data_files is not None:
            for path in self.files():
                h.update(path.encode())
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()[:16]


def _load_raw(source: TextSource) -> datasets.DatasetDict:
    if source.data_files is not None:
        files = source.files()
        builder = _BUILDER_BY_SUFFIX[Path(files[0]).suffix]
        loaded = datasets.load_dataset(builder, data_files=files, split="train")
        raw = datasets.DatasetDict({"train": loaded})
    else:
        path = Path(source.dataset or "")
        raw = (datasets.load_from_disk(str(path)) if (path / "dataset_dict.json").exists()
               else datasets.load_dataset(source.dataset, source.dataset_config))
        if isinstance(raw, datasets.Dataset):
            raw = datasets.DatasetDict({"train": raw})
    if "train" not in raw:
        raise ValueError(f"the text source has splits {sorted(raw)}, but no 'train' split")
    if source.text_column not in raw["train"].column_names:
        raise ValueError(f"the text source has no column {source.text_column!r} (columns: "
                         f"{raw['train'].column_names}); set task.text_column")
    return raw


def raw_split(source: TextSource, split: str) -> datasets.Dataset:
    """The documents of one split: the source's own splits when it has validation and test,
    otherwise disjoint held-out slices of its train split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the text task has {SPLITS}")
    raw = _load_raw(source)
    if "validation" in raw and "test" in raw:
        ds = raw[split]
    else:
        train = raw["train"]
        n_held = max(1, int(len(train) * source.held_out_fraction))
        if len(train) < 3 * n_held:
            raise ValueError(f"the text source has only {len(train)} documents, too few to hold out "
                             f"{n_held} for validation and {n_held} for test")
        order = train.shuffle(seed=source.seed).flatten_indices()
        bounds = {"validation": (0, n_held), "test": (n_held, 2 * n_held), "train": (2 * n_held, len(train))}
        ds = order.select(range(*bounds[split]))
    return ds.filter(lambda text: bool(text and text.strip()), input_columns=source.text_column)


def blocks_from_documents(docs: Sequence[Sequence[int]], *, bos_id: int, eos_id: int, block_size: int,
                          packing: bool) -> list[list[int]]:
    """``[BOS] doc [EOS]`` per document, then packed into full blocks or truncated per document."""
    if block_size < 3:
        raise ValueError(f"task.block_size must be >= 3 ([BOS], a token, [EOS]), got {block_size}")
    if not packing:
        return [[bos_id, *doc[: block_size - 2], eos_id] for doc in docs]
    stream = [tok for doc in docs for tok in (bos_id, *doc, eos_id)]
    usable = len(stream) - len(stream) % block_size
    return [stream[i: i + block_size] for i in range(0, usable, block_size)]


def iter_texts(ds: datasets.Dataset, column: str, limit: int) -> Iterator[str]:
    for i, row in enumerate(ds.select_columns([column])):
        if i >= limit:
            return
        yield row[column]


def corpus_tokenizer(source: TextSource, *, vocab_size: int, cache_dir: Path | None = None) -> Tokenizer:
    """A SentencePiece model trained on the training split (at most 1M documents), cached."""
    from xlm.data.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece

    root = (cache_dir or default_cache_root() / "text") / "tokenizers"
    path = root / f"sp-{source.fingerprint()}-v{vocab_size}.model"
    if path.is_file():
        return SentencePieceTokenizer.from_file(path)
    with quiet_datasets():
        train = raw_split(source, "train")
    tokenizer = SentencePieceTokenizer(train_sentencepiece(iter_texts(train, source.text_column, 1_000_000),
                                                           vocab_size=vocab_size))
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-")
    os.close(fd)
    tokenizer.save(tmp)
    os.replace(tmp, path)
    return tokenizer


def load_tokenizer_file(path: str) -> Tokenizer:
    """A SentencePiece `.model` file, or an HF `tokenizer.json` (or a dir holding one)."""
    p = Path(path).expanduser()
    if p.suffix == ".model":
        from xlm.data.sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.from_file(p)
    if p.suffix == ".json" or p.is_dir():
        from xlm.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_file(p)
    raise ValueError(f"task.tokenizer={path!r} is neither a SentencePiece .model file nor an HF tokenizer.json "
                     f"(or a directory with one)")


def tokenized_split(source: TextSource, split: str, tokenizer: Tokenizer, *, block_size: int, packing: bool,
                    cache_dir: Path | None = None) -> datasets.Dataset:
    tok_hash = hashlib.sha256(json.dumps(tokenizer.spec(), sort_keys=True).encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps([CACHE_FORMAT_VERSION, source.fingerprint(), tok_hash, block_size, packing,
                                     split]).encode()).hexdigest()[:16]
    path = (cache_dir or default_cache_root() / "text") / f"{split}-{key}"
    column = source.text_column

    def build() -> datasets.Dataset:
        docs = raw_split(source, split)

        def to_blocks(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
            ids = [tokenizer.encode(text) for text in batch[column]]
            return {"input_ids": blocks_from_documents(ids, bos_id=tokenizer.bos_token_id,
                                                       eos_id=tokenizer.eos_token_id, block_size=block_size,
                                                       packing=packing)}

        out = docs.map(to_blocks, batched=True, batch_size=1000, remove_columns=docs.column_names,
                       new_fingerprint=key)
        if len(out) == 0:
            raise ValueError(f"the {split} split holds too little text for one block of {block_size} tokens; "
                             f"lower task.block_size or set task.packing=false")
        return out

    def check(ds: datasets.Dataset) -> None:
        if ds.column_names != ["input_ids"]:
            raise ValueError(f"unexpected columns {ds.column_names}")

    return cached_dataset(path, build, check)
