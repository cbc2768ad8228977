"""SentencePiece tokenizer with xlm-core's special ids ([PAD]=0 ... [UNK]=6), so every family's
collators work on text exactly as on the star tasks.

The model proto travels inside `spec()` (base64), so a run dir rebuilds its tokenizer with no
file beside it.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from xlm.errors import InvalidValueError, PathNotFoundError, UnknownFormatError, XlmUserError
from xlm.io import replace_file

from .tokenizers import SPECIAL_TOKENS, checked_ids

_PAD, _CLS, _MASK, _EOS, _BOS, _SEP, _UNK = range(7)


#: The lowest character coverage SentencePiece's trainer takes.
MIN_CHARACTER_COVERAGE = 0.98
#: SentencePiece's reason when the vocabulary cannot hold every character (plus the special ids) it must cover.
_TOO_FEW_IDS = re.compile(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)\.")


def train_sentencepiece(lines: Iterable[str], *, vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 1.0, vocab_setting: str = "vocab_size",
                        coverage_setting: str | None = "character_coverage") -> bytes:
    """A SentencePiece model proto trained on `lines`, with the special ids laid out as xlm-core's.
    `vocab_setting` and `coverage_setting` name where the user sets those two values (None: nowhere, the
    text task's own tokenizer), for the error of a vocabulary too small for the corpus's characters."""
    if model_type not in ("unigram", "bpe", "char", "word"):
        raise InvalidValueError(f"model_type must be unigram, bpe, char or word, got {model_type!r}")
    if not MIN_CHARACTER_COVERAGE <= character_coverage <= 1:
        setting = coverage_setting or "character_coverage"
        raise InvalidValueError(f"{setting} must be in [{MIN_CHARACTER_COVERAGE}, 1] (the share of the corpus's "
                                f"characters the vocabulary covers, as SentencePiece takes it), got "
                                f"{character_coverage}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise InvalidValueError(f"{vocab_setting} must be more than xlm's {len(SPECIAL_TOKENS)} special tokens "
                                f"(and at least the corpus's distinct characters), got {vocab_size}")
    out = io.BytesIO()
    # the trainer reports the iterator's errors as its own RuntimeError ("INTERNAL: KeyboardInterrupt: ..." and a
    # Python stack for a Ctrl-C while the corpus is read): they are raised as they were, once it returns
    failed: list[XlmUserError | KeyboardInterrupt] = []

    def sentences() -> Iterator[str]:
        try:
            yield from lines
        except (XlmUserError, KeyboardInterrupt) as err:
            failed.append(err)
            raise

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=out, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, pad_id=_PAD, unk_id=_UNK, bos_id=_BOS, eos_id=_EOS,
            pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[BOS]", eos_piece="[EOS]",
            control_symbols=["[CLS]", "[MASK]", "[SEP]"], minloglevel=2)
    except RuntimeError as err:  # e.g. "Vocabulary size too high (60). Please set it to a value <= 45."
        if failed:
            raise failed[0] from None
        reason = str(err).rpartition("] ")[2] or str(err)  # without "INTERNAL: src/trainer_interface.cc(744) [...]"
        if too_few := _TOO_FEW_IDS.search(reason):
            needed = int(too_few.group(1))
            if character_coverage <= MIN_CHARACTER_COVERAGE:
                lower = ""
            elif coverage_setting is None:
                lower = (f", or train one that leaves the rarest characters to [UNK] (`xlm train-tokenizer "
                         f"--character-coverage {MIN_CHARACTER_COVERAGE}`) and give it as task.tokenizer")
            else:
                lower = (f", or {coverage_setting} lower (now {character_coverage}, down to {MIN_CHARACTER_COVERAGE}) "
                         f"to leave the rarest characters to [UNK]")
            raise InvalidValueError(
                f"{vocab_setting}={vocab_size} is too small for this corpus: its characters and xlm's "
                f"{len(SPECIAL_TOKENS)} special tokens need {needed} ids; set {vocab_setting} to at least "
                f"{needed}{lower}") from None
        raise InvalidValueError(f"cannot train a SentencePiece model with {vocab_setting}={vocab_size}: {reason}"
                                ) from None
    if failed:  # never a model of part of the corpus
        raise failed[0]
    return out.getvalue()


class SentencePieceTokenizer:
    def __init__(self, model_proto: bytes) -> None:
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._proto = model_proto
        pieces = [self._sp.id_to_piece(i) for i in range(len(SPECIAL_TOKENS))]
        if tuple(pieces) != SPECIAL_TOKENS:
            raise UnknownFormatError(f"this SentencePiece model's first ids are {pieces}, not xlm's special tokens "
                                     f"{list(SPECIAL_TOKENS)}; train it with `python -m xlm.recipes.train_tokenizer`")
        self._special_ids = frozenset(range(len(SPECIAL_TOKENS)))

    @classmethod
    def from_file(cls, path: str | Path) -> SentencePieceTokenizer:
        path = Path(path)
        if not path.is_file():
            raise PathNotFoundError(f"no SentencePiece model at {path} (make one with "
                                    f"`python -m xlm.recipes.train_tokenizer`)")
        return cls(path.read_bytes())

    vocab_size = property(lambda self: self._sp.get_piece_size())
    pad_token_id = property(lambda self: _PAD)
    cls_token_id = property(lambda self: _CLS)
    mask_token_id = property(lambda self: _MASK)
    eos_token_id = property(lambda self: _EOS)
    bos_token_id = property(lambda self: _BOS)
    sep_token_id = property(lambda self: _SEP)
    unk_token_id = property(lambda self: _UNK)
    special_ids = property(lambda self: self._special_ids)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        ids = checked_ids(ids, self.vocab_size)
        if skip_special_tokens:
            return self._sp.decode([i for i in ids if i not in self._special_ids])
        return "".join(SPECIAL_TOKENS[i] if i in self._special_ids else self._sp.decode([i]) for i in ids)

    def spec(self) -> dict[str, Any]:
        return {"kind": "sentencepiece", "model_proto_b64": base64.b64encode(self._proto).decode("ascii")}

    def save(self, path: str | Path) -> None:
        """In one rename: a task reading the file (or a Ctrl-C while writing it) never sees half of it."""
        replace_file(Path(path), self._proto)


def sentencepiece_from_spec(spec: Mapping[str, Any]) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(base64.b64decode(spec["model_proto_b64"]))
