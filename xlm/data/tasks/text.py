"""Language modelling on a text corpus: local files or an HF dataset, tokenized into blocks.

Each document becomes ``[BOS] tokens [EOS]``, or as a model's own tokenizer frames it (GPT-2's
one <|endoftext|> between documents, BERT's [CLS]/[SEP]: :mod:`xlm.data.framing`). With packing,
documents are concatenated and cut into rows of exactly ``block_size`` tokens (a batch of
documents' tail shorter than a block is dropped, as HF's run_clm does); without it, each
document is one row, truncated to ``block_size`` (its [EOS] kept). Rows are
``{"input_ids": [...]}``: every family's LM collator reads them.

Splits: the source's own ``validation``/``test`` splits when it has them, otherwise disjoint
held-out slices of ``train`` (``held_out_fraction`` each, chosen by the task seed).
Tokenized splits are cached under ``$XLM_CACHE_DIR/text`` keyed by the source, the tokenizer,
the block layout and the seed; when no tokenizer is given, a SentencePiece model is trained on
the training split and cached the same way.

Streaming (``task.streaming=true``, for corpora that do not fit in memory or on disk twice):
nothing is loaded or cached; the documents are read through HF ``datasets`` with
``streaming=True`` (an ``IterableDataset`` whose shards are the local files, or the hub
dataset's shards), sharded by rank and dataloader worker, tokenized and packed on the fly
(:mod:`xlm.data.streaming`, which also keeps the data position saved in checkpoints). When the
source has no ``validation``/``test`` splits, a document's split is a seeded hash of its text
(``held_out_fraction`` each), so no pass over the corpus is needed; the evaluation splits are the
first ``task.streaming_eval_documents`` documents of their split, packed into blocks in memory.
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from xlm.data.disk_cache import cached_dataset, default_cache_root, quiet_datasets
from xlm.data.framing import DocumentFrame
from xlm.data.streaming import PackedRows, RowStream
from xlm.data.task import TaskConfig, take
from xlm.data.tokenizers import Tokenizer, tokenizer_from_spec
from xlm.errors import InvalidValueError, PathNotFoundError, UnknownFormatError, XlmUserError
from xlm.io import read_json_object

#: Bumped whenever the tokenized layout changes; part of every cache key.
CACHE_FORMAT_VERSION = 2
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
            raise InvalidValueError("the text task reads either task.data_files=PATH[,PATH...] or task.dataset=NAME; "
                                    f"got data_files={self.data_files!r}, dataset={self.dataset!r}")
        if not 0.0 < self.held_out_fraction < 0.5:
            raise InvalidValueError(f"task.held_out_fraction must be in (0, 0.5), got {self.held_out_fraction}")

    def files(self) -> list[str]:
        """The data files, globs expanded, each checked to exist (and not all of them empty)."""
        import glob

        out: list[str] = []
        for pattern in (p.strip() for p in (self.data_files or "").split(",") if p.strip()):
            matches = sorted(glob.glob(os.path.expanduser(pattern)))
            if not matches:
                raise PathNotFoundError(f"task.data_files: no file matches {pattern!r}")
            out += matches
        if all(os.path.getsize(f) == 0 for f in out):
            raise InvalidValueError(f"task.data_files: {', '.join(out)} {'is' if len(out) == 1 else 'are'} empty; "
                                    f"give a corpus with text in it")
        suffixes = {Path(f).suffix for f in out}
        unknown = suffixes - set(_BUILDER_BY_SUFFIX)
        if unknown or len({_BUILDER_BY_SUFFIX[s] for s in suffixes - unknown}) > 1:
            raise InvalidValueError(f"task.data_files must all be one kind of {sorted(_BUILDER_BY_SUFFIX)}; "
                                    f"got {sorted(suffixes)}")
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


class DatasetUnreachableError(XlmUserError, ConnectionError):
    """The hub that `task.dataset` names could not be reached (no network, a firewall, an offline cache
    without the dataset)."""


def _load_named(source: TextSource, **kwargs: Any) -> Any:
    """The HF dataset `source.dataset` names; one that cannot be found or reached is the user's to fix."""
    try:
        return datasets.load_dataset(source.dataset, source.dataset_config, **kwargs)
    except FileNotFoundError as err:  # datasets' DatasetNotFoundError, DataFilesNotFoundError
        raise PathNotFoundError(str(err)) from err
    except ConnectionError as err:
        raise DatasetUnreachableError(f"task.dataset={source.dataset!r}: {err}; check the network (HF_ENDPOINT, "
                                      f"HF_HUB_OFFLINE), or train on local files with task.data_files=PATH") from err


def first_bad_utf8(files: Sequence[str], kind: str = "corpus files") -> InvalidValueError | None:
    """The first byte of `files` that is not UTF-8, as the error naming its file and line (None: all are);
    `kind` says what the files are for."""
    for path in files:
        decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                pending = decoder.getstate()[0]  # a character begun in the last chunk (no newline in it)
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:  # err.start counts from the pending bytes
                    data = pending + chunk
                    line += data[: err.start].count(b"\n")
                    return InvalidValueError(f"{path}, line {line}: not UTF-8 (byte 0x{data[err.start]:02x}); "
                                             f"{kind} must be UTF-8 text (convert it, e.g. with iconv -t utf-8)")
                line += chunk.count(b"\n")
        if decoder.getstate()[0]:
            return InvalidValueError(f"{path}, line {line}: ends inside a character; {kind} must be UTF-8 "
                                     f"text (convert it, e.g. with iconv -t utf-8)")
    return None


def _load_files(files: list[str], **kwargs: Any) -> Any:
    """`datasets.load_dataset` of local files; one that is not UTF-8 is named with its line, one its builder
    cannot parse with the parser's reason."""
    builder = _BUILDER_BY_SUFFIX[Path(files[0]).suffix]
    try:
        return datasets.load_dataset(builder, data_files=files, split="train", **kwargs)
    except Exception as err:  # datasets wraps a decoding error in DatasetGenerationError, without the file
        if bad := first_bad_utf8(files):
            raise bad from None
        if isinstance(err, datasets.exceptions.DatasetGenerationError):  # a file its builder cannot parse
            cause = err.__cause__ or err
            raise UnknownFormatError(f"task.data_files: cannot read {', '.join(files)} as {builder} "
                                     f"({type(cause).__name__}: {str(cause).splitlines()[0]})") from err
        raise


#: Where a user names the text column: the task setting, or train-tokenizer's option.
SET_TEXT_COLUMN = "set task.text_column (xlm train-tokenizer: --text-column)"


def check_text_column(ds: datasets.Dataset, column: str, where: str) -> None:
    """Every row's `column` is a string (or empty): a JSON corpus may hold numbers or lists there."""
    feature = ds.features[column]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return
    for row, value in enumerate(ds[column], start=1):
        if value is not None and not isinstance(value, str):
            raise InvalidValueError(f"{where}, row {row}, column {column!r}: {type(value).__name__} {value!r} "
                                    f"where a document's text goes; every row's {column!r} must be a string")
    raise InvalidValueError(f"{where}: column {column!r} holds {feature}, not text; {SET_TEXT_COLUMN}")


def _load_raw(source: TextSource) -> datasets.DatasetDict:
    if source.data_files is not None:
        files = source.files()
        raw = datasets.DatasetDict({"train": _load_files(files)})
    else:
        path = Path(source.dataset or "")
        raw = (datasets.load_from_disk(str(path)) if (path / "dataset_dict.json").exists()
               else _load_named(source))
        if isinstance(raw, datasets.Dataset):
            raw = datasets.DatasetDict({"train": raw})
    if "train" not in raw:
        raise InvalidValueError(f"the text source has splits {sorted(raw)}, but no 'train' split")
    if source.text_column not in raw["train"].column_names:
        raise InvalidValueError(f"the text source has no column {source.text_column!r} (columns: "
                                f"{raw['train'].column_names}); {SET_TEXT_COLUMN}")
    where = ", ".join(source.files()) if source.data_files is not None else str(source.dataset)
    for name, split in raw.items():
        check_text_column(split, source.text_column, where if len(raw) == 1 else f"{where} [{name}]")
    return raw


def raw_split(source: TextSource, split: str) -> datasets.Dataset:
    """The documents of one split: the source's own splits when it has validation and test,
    otherwise disjoint held-out slices of its train split."""
    if split not in SPLITS:
        raise InvalidValueError(f"unknown split {split!r}; the text task has {SPLITS}")
    raw = _load_raw(source)
    if "validation" in raw and "test" in raw:
        ds = raw[split]
    else:
        train = raw["train"]
        n_held = max(1, int(len(train) * source.held_out_fraction))
        if len(train) < 3 * n_held:
            raise InvalidValueError(f"the text source has only {len(train)} documents, too few to hold out "
                                    f"{n_held} for validation and {n_held} for test")
        order = train.shuffle(seed=source.seed).flatten_indices()
        bounds = {"validation": (0, n_held), "test": (n_held, 2 * n_held), "train": (2 * n_held, len(train))}
        ds = order.select(range(*bounds[split]))
    return ds.filter(lambda text: bool(text and text.strip()), input_columns=source.text_column)


def blocks_from_documents(docs: Sequence[Sequence[int]], *, frame: DocumentFrame, block_size: int,
                          packing: bool) -> list[list[int]]:
    """Each document framed by its markers (``[BOS] doc [EOS]``), then packed into full blocks or truncated per
    document."""
    if block_size < 3:
        raise InvalidValueError(f"task.block_size must be >= 3 ([BOS], a token, [EOS]), got {block_size}")
    if not packing:
        return [frame.row(doc, block_size) for doc in docs]
    stream = [tok for doc in docs for tok in frame.packed(doc)]
    usable = len(stream) - len(stream) % block_size
    return [stream[i: i + block_size] for i in range(0, usable, block_size)]


def iter_texts(ds: datasets.Dataset, column: str, limit: int) -> Iterator[str]:
    for i, row in enumerate(ds.select_columns([column])):
        if i >= limit:
            return
        yield row[column]


def corpus_tokenizer(source: TextSource, *, vocab_size: int, cache_dir: Path | None = None,
                     streaming: bool = False) -> Tokenizer:
    """A SentencePiece model trained on the training split (at most 1M documents; streamed, the
    first 1M), cached."""
    from xlm.data.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece

    root = (cache_dir or default_cache_root() / "text") / "tokenizers"
    fingerprint = stream_fingerprint(source) if streaming else source.fingerprint()
    path = root / f"sp-{'stream-' if streaming else ''}{fingerprint}-v{vocab_size}.model"
    if path.is_file():
        return SentencePieceTokenizer.from_file(path)
    if streaming:
        texts: Iterator[str] = stream_texts(source, "train", 1_000_000)
    else:
        with quiet_datasets():
            train = raw_split(source, "train")
        texts = iter_texts(train, source.text_column, 1_000_000)
    first = next(texts, None)
    if first is None:
        raise InvalidValueError(f"the training split of {source.data_files or source.dataset} has no text (every "
                                f"document is empty or whitespace): there is nothing to train a tokenizer on")
    texts = itertools.chain([first], texts)
    tokenizer = SentencePieceTokenizer(train_sentencepiece(texts, vocab_size=vocab_size,
                                                           vocab_setting="task.tokenizer_vocab_size",
                                                           coverage_setting=None))
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-")
    os.close(fd)
    tokenizer.save(tmp)
    os.replace(tmp, path)
    return tokenizer


def load_tokenizer_file(path: str) -> Tokenizer:
    """A SentencePiece `.model` file, an HF `tokenizer.json` (or a dir holding one), or an xlm run or export
    dir (the tokenizer its config.json records: a second model on the first one's tokens)."""
    p = Path(path).expanduser()
    xlm_dir = p.is_dir() and not (p / "tokenizer.json").is_file()  # an HF dir holds a tokenizer.json
    if xlm_dir and (p / "config.json").is_file():
        spec = read_json_object(p / "config.json", UnknownFormatError).get("tokenizer")
        if not isinstance(spec, Mapping):
            raise UnknownFormatError(f"task.tokenizer={path!r}: its config.json records no xlm tokenizer; give a "
                                     f"finished xlm run or export dir, a SentencePiece .model or an HF tokenizer.json")
        return tokenizer_from_spec(spec)
    if xlm_dir and (p / "run.json").is_file():
        raise UnknownFormatError(f"task.tokenizer={path!r} is an xlm run that has not finished (it records its "
                                 f"tokenizer in config.json at the end): wait for it, or export a checkpoint of it "
                                 f"(`xlm convert --from {path} --checkpoint last --out DIR`) and give that")
    if p.suffix == ".model":
        from xlm.data.sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.from_file(p)
    if p.suffix == ".json" or p.is_dir():
        from xlm.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_file(p)
    kinds = "a SentencePiece .model file, an HF tokenizer.json (or a directory with one), or an xlm run or export dir"
    if not p.exists():
        raise PathNotFoundError(f"task.tokenizer={path!r} does not exist; give {kinds}")
    raise UnknownFormatError(f"task.tokenizer={path!r} is not {kinds}")


def tokenized_split(source: TextSource, split: str, tokenizer: Tokenizer, *, block_size: int, packing: bool,
                    cache_dir: Path | None = None) -> datasets.Dataset:
    tok_hash = hashlib.sha256(json.dumps(tokenizer.spec(), sort_keys=True).encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps([CACHE_FORMAT_VERSION, source.fingerprint(), tok_hash, block_size, packing,
                                     split]).encode()).hexdigest()[:16]
    path = (cache_dir or default_cache_root() / "text") / f"{split}-{key}"
    column = source.text_column

    def build() -> datasets.Dataset:
        docs = raw_split(source, split)
        frame = DocumentFrame.of(tokenizer)

        def to_blocks(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
            ids = [tokenizer.encode(text) for text in batch[column]]
            return {"input_ids": blocks_from_documents(ids, frame=frame, block_size=block_size, packing=packing)}

        out = docs.map(to_blocks, batched=True, batch_size=1000, remove_columns=docs.column_names,
                       new_fingerprint=key)
        if len(out) == 0:
            raise InvalidValueError(f"the {split} split holds too little text for one block of {block_size} tokens; "
                                    f"lower task.block_size or set task.packing=false")
        return out

    def check(ds: datasets.Dataset) -> None:
        if ds.column_names != ["input_ids"]:
            raise ValueError(f"unexpected columns {ds.column_names}")

    return cached_dataset(path, build, check)


# ------------------------------------------------------------------------------- streaming


def stream_fingerprint(source: TextSource) -> str:
    """What a streamed source depends on, without reading it: file paths, sizes and mtimes."""
    parts: list[Any] = [source.dataset, source.dataset_config, source.text_column, source.held_out_fraction,
                        source.seed]
    if source.data_files is not None:
        parts += [[path, (st := os.stat(path)).st_size, st.st_mtime_ns] for path in source.files()]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def held_out_bucket(text: str, *, seed: int, fraction: float) -> str:
    """The streaming split of a document without its own split: 'validation' or 'test' (each with
    probability `fraction`) or 'train', from a seeded hash of its text (duplicates stay together)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, salt=seed.to_bytes(8, "little", signed=True))
    u = int.from_bytes(digest.digest(), "big") / 2.0 ** 64
    return "validation" if u < fraction else "test" if u < 2 * fraction else "train"


def _streaming_splits(source: TextSource) -> dict[str, datasets.IterableDataset]:
    with quiet_datasets():
        if source.data_files is not None:
            return {"train": _load_files(source.files(), streaming=True)}
        path = Path(source.dataset or "").expanduser()
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():  # save_to_disk: memory-mapped
            saved = datasets.load_from_disk(str(path))
            splits = {"train": saved} if isinstance(saved, datasets.Dataset) else dict(saved)
            return {k: v.to_iterable_dataset(num_shards=max(1, min(len(v), 256))) for k, v in splits.items()}
        loaded = _load_named(source, streaming=True)
        return dict(loaded) if isinstance(loaded, datasets.IterableDatasetDict) else {"train": loaded}


class StreamedSplit:
    """One split of a text source as sharded documents (`xlm.data.streaming.DocumentSource`).

    `documents(shard, start)` yields one item per raw row of the shard from row `start` on: the
    text, or None for an empty row or (without the source's own splits) a row held out for
    another split. Picklable: each dataloader worker opens the source itself."""

    def __init__(self, source: TextSource, split: str) -> None:
        if split not in SPLITS:
            raise InvalidValueError(f"unknown split {split!r}; the text task has {SPLITS}")
        self.source, self.split = source, split
        self._streams: dict[str, datasets.IterableDataset] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "split": self.split, "_streams": None}

    def _open(self) -> tuple[datasets.IterableDataset, bool]:
        if self._streams is None:
            self._streams = _streaming_splits(self.source)
            if "train" not in self._streams:
                raise InvalidValueError(f"the text source has splits {sorted(self._streams)}, but no 'train' split")
        own = "validation" in self._streams and "test" in self._streams
        return self._streams[self.split if own else "train"], own

    @property
    def num_shards(self) -> int:
        return self._open()[0].num_shards

    def documents(self, shard: int, start: int) -> Iterator[str | None]:
        stream, own = self._open()
        column, seed, fraction = self.source.text_column, self.source.seed, self.source.held_out_fraction
        part = stream.shard(num_shards=stream.num_shards, index=shard) if stream.num_shards > 1 else stream
        if start:
            part = part.skip(start)
        # .iter(batch_size), not iter(): inside a dataloader worker, iter() would shard again by worker
        for batch in self._batches(part):
            if column not in batch:
                raise InvalidValueError(f"the text source has no column {column!r} (columns: {sorted(batch)}); "
                                        f"{SET_TEXT_COLUMN}")
            for row, text in enumerate(batch[column], start=start + 1):
                if text is not None and not isinstance(text, str):
                    raise InvalidValueError(f"{self.source.data_files or self.source.dataset} (shard {shard}), row "
                                            f"{row}, column {column!r}: {type(text).__name__} {text!r} where a "
                                            f"document's text goes; every row's {column!r} must be a string")
                if not (text and text.strip()) or (not own and held_out_bucket(text, seed=seed, fraction=fraction)
                                                    != self.split):
                    yield None
                else:
                    yield text
            start += len(batch[column])

    def _batches(self, part: datasets.IterableDataset) -> Iterator[dict[str, list[Any]]]:
        """The stream in batches; a file that is not UTF-8 is named with its line (the stream decodes lazily)."""
        try:
            yield from part.iter(batch_size=256)
        except Exception as err:
            files = self.source.files() if self.source.data_files is not None else []
            raise first_bad_utf8(files) or err from None


def stream_texts(source: TextSource, split: str, limit: int) -> Iterator[str]:
    """The first `limit` documents of a split, shard after shard."""
    docs, count = StreamedSplit(source, split), 0
    for shard in range(docs.num_shards):
        for text in docs.documents(shard, 0):
            if text is not None:
                if count >= limit:
                    return
                count += 1
                yield text


def streamed_eval_split(source: TextSource, split: str, tokenizer: Tokenizer, *, block_size: int, packing: bool,
                        max_documents: int) -> datasets.Dataset:
    """An evaluation split of a streamed source: its first `max_documents` documents in blocks."""
    ids = [tokenizer.encode(text) for text in stream_texts(source, split, max_documents)]
    rows = blocks_from_documents(ids, frame=DocumentFrame.of(tokenizer), block_size=block_size, packing=packing)
    if not rows:
        raise InvalidValueError(f"the streamed {split} split's first {max_documents} documents hold too little text "
                                f"for one block of {block_size} tokens; raise task.streaming_eval_documents or "
                                f"task.held_out_fraction, or lower task.block_size")
    return datasets.Dataset.from_dict({"input_ids": rows})


class TextRowFactory:
    """Builds consumer `c` of `n`'s packed training rows (`xlm.data.streaming.PackedRows`).
    Picklable (the tokenizer travels as its spec) so that dataloader workers build their own."""

    def __init__(self, source: TextSource, tokenizer: Tokenizer, *, block_size: int, packing: bool, seed: int,
                 train_size: int | None) -> None:
        self.source, self.tokenizer, self.block_size, self.packing = source, tokenizer, block_size, packing
        self.seed, self.train_size = seed, train_size
        self._docs = StreamedSplit(source, "train")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "tokenizer": self.tokenizer.spec()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({**state, "tokenizer": tokenizer_from_spec(state["tokenizer"])})

    def __call__(self, consumer: int, num_consumers: int) -> PackedRows:
        per_pass = None if self.train_size is None else -(-self.train_size // num_consumers)
        tok = self.tokenizer
        return PackedRows(self._docs, consumer=consumer, num_consumers=num_consumers, seed=self.seed,
                          encode=tok.encode, frame=DocumentFrame.of(tok),
                          block_size=self.block_size, packing=self.packing, rows_per_pass=per_pass)


# ------------------------------------------------------------------------------- the task


@dataclass(kw_only=True)
class TextTaskConfig(TaskConfig):
    """`--task text`: the shared task settings and where the corpus is, how it is tokenized and cut into rows."""

    name: str = "text"
    data_files: str | None = None  # comma-separated files or globs (.txt one document per line, .jsonl, ...)
    dataset: str | None = None  # or an HF dataset name / local dataset dir
    dataset_config: str | None = None
    text_column: str = "text"
    tokenizer: str | None = None  # a SentencePiece .model, HF tokenizer.json or xlm run dir; None = train one
    tokenizer_vocab_size: int = 4096  # size of the SentencePiece model trained when `tokenizer` is None
    block_size: int = 128  # tokens per row ([BOS]/[EOS] included)
    packing: bool = True  # concatenate documents into full blocks (else one truncated document per row)
    held_out_fraction: float = 0.05  # validation and test slices of train when the source has none
    streaming: bool = False  # read, tokenize and pack the training text on the fly (corpora larger than memory)
    streaming_eval_documents: int = 1000  # streaming: validation/test are their split's first N documents


class TextTask:
    """Language modelling on a corpus: rows of `input_ids` blocks, scored by the loss alone (NLL, or
    the NELBO bound of the diffusion/insertion families)."""

    is_seq2seq = False

    def __init__(self, config: TextTaskConfig, tokenizer: Tokenizer | None = None) -> None:
        """`tokenizer`: read the corpus with it (a model's own), instead of `config.tokenizer` or one trained here."""
        self.config = config
        self.name = config.name
        self.source = TextSource(data_files=config.data_files, dataset=config.dataset,
                                 dataset_config=config.dataset_config, text_column=config.text_column,
                                 held_out_fraction=config.held_out_fraction, seed=config.seed)
        self.streaming = config.streaming
        if self.streaming and config.streaming_eval_documents < 1:
            raise InvalidValueError(f"task.streaming_eval_documents must be >= 1, got "
                                    f"{config.streaming_eval_documents}")
        if tokenizer is not None and config.tokenizer:
            raise InvalidValueError(f"task.tokenizer={config.tokenizer!r} is set, but this task reads the text with "
                                    f"the model's own tokenizer; leave task.tokenizer out")
        self.tokenizer = tokenizer or (load_tokenizer_file(config.tokenizer) if config.tokenizer
                                       else corpus_tokenizer(self.source, vocab_size=config.tokenizer_vocab_size,
                                                             streaming=self.streaming))
        self.max_seq_len = config.block_size
        self.max_new_tokens = config.block_size  # the length of an unconditional sample

    def dataset(self, split: str) -> datasets.Dataset:
        if self.streaming:
            if split == "train":
                raise TypeError("with task.streaming=true the training split is a stream (TextTask.train_stream), "
                                "not a dataset")
            return streamed_eval_split(self.source, split, self.tokenizer, block_size=self.config.block_size,
                                       packing=self.config.packing,
                                       max_documents=self.config.streaming_eval_documents)
        ds = tokenized_split(self.source, split, self.tokenizer, block_size=self.config.block_size,
                             packing=self.config.packing)
        return take(ds, self.config.train_size if split == "train" else None)

    def train_stream(self, *, rank: int, world_size: int, num_workers: int, seed: int) -> RowStream:
        """This rank's training rows (`xlm.data.streaming.RowStream`): `next_rows(n)`, `state()`,
        `load_state(state)`. The shards are split between `world_size * max(1, num_workers)` readers;
        with task.train_size, each reader's pass over the corpus stops after its share of that many rows."""
        if not self.streaming:
            raise TypeError("train_stream needs task.streaming=true")
        factory = TextRowFactory(self.source, self.tokenizer, block_size=self.config.block_size,
                                 packing=self.config.packing, seed=seed, train_size=self.config.train_size)
        return RowStream(factory, rank=rank, world_size=world_size, num_workers=num_workers)

    def score(self, pred_text: str, example: Mapping[str, Any]) -> dict[str, float]:
        raise TypeError("the text task has no reference answers to score against; it is evaluated by its loss")
