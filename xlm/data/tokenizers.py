"""Tokenizers: a small protocol every model family codes against, and a whitespace word tokenizer.

Special token ids follow xlm-core: ``[PAD]=0 [CLS]=1 [MASK]=2 [EOS]=3 [BOS]=4 [SEP]=5 [UNK]=6``;
the vocabulary's words follow from id 7 in the order given.

A tokenizer describes itself with :meth:`Tokenizer.spec` (a JSON-serialisable dict) and
:func:`tokenizer_from_spec` rebuilds it, so checkpoints can carry their tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from xlm.errors import XlmUserError

__all__ = [
    "SPECIAL_TOKENS",
    "MissingSpecialTokenError",
    "Tokenizer",
    "UnknownTokenError",
    "WordTokenizer",
    "optional_token_id",
    "padding_id",
    "register_tokenizer_kind",
    "tokenizer_from_spec",
]

#: xlm-core's special tokens, in id order.
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[MASK]", "[EOS]", "[BOS]", "[SEP]", "[UNK]")

# How many vocabulary words an error message lists before eliding the middle.
_MAX_LISTED_WORDS = 60


class MissingSpecialTokenError(XlmUserError, LookupError):
    """A model's own tokenizer lacks a special token that was asked for (GPT-2's has no [MASK])."""


class UnknownTokenError(XlmUserError, ValueError):
    """Text contains a word the tokenizer's vocabulary does not have.

    Attributes:
        words: the unknown words, in order of appearance.
        positions: their (0-based, whitespace-word) positions in the text.
    """

    def __init__(self, message: str, words: Sequence[str] = (), positions: Sequence[int] = ()):
        super().__init__(message)
        self.words = list(words)
        self.positions = list(positions)


@runtime_checkable
class Tokenizer(Protocol):
    """What models, collators and samplers need of a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_token_id(self) -> int: ...

    @property
    def cls_token_id(self) -> int: ...

    @property
    def mask_token_id(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    @property
    def bos_token_id(self) -> int: ...

    @property
    def sep_token_id(self) -> int: ...

    @property
    def unk_token_id(self) -> int: ...

    @property
    def special_ids(self) -> frozenset[int]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str: ...

    def spec(self) -> dict: ...


def optional_token_id(tokenizer: Tokenizer, role: str) -> int | None:
    """The id of `role` ("eos", "pad", ...), or None where a model's own tokenizer has no such token
    (a WordLevel tokenizer saved with no special tokens): generation then runs to its length limit,
    as transformers' generate does without an eos."""
    try:
        return getattr(tokenizer, f"{role}_token_id")
    except MissingSpecialTokenError:
        return None


def padding_id(tokenizer: Tokenizer) -> int:
    """The id that fills padded positions of prompts and outputs: [PAD] (or [EOS], as HFTokenizer gives),
    else 0. Padding is masked out wherever a model sees it, so any id does for a tokenizer with neither."""
    pad = optional_token_id(tokenizer, "pad")
    return 0 if pad is None else pad


def _as_int_list(ids: Any) -> list[int]:
    """A list of python ints from a sequence, a numpy array or a (1-d) torch tensor."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
        if not isinstance(ids, list):  # a 0-d tensor/array
            ids = [ids]
    return [int(i) for i in ids]


def checked_ids(ids: Any, vocab_size: int) -> list[int]:
    """`ids` as python ints, refused with one line when any is outside the vocabulary: a backend would
    raise its own error, or silently decode garbage."""
    ids = _as_int_list(ids)
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token ids {bad[:5]} are out of range for this tokenizer (0..{vocab_size - 1})")
    return ids


class WordTokenizer:
    """Whitespace word tokenizer over a fixed word list, with xlm-core's special ids.

    ``encode`` splits on whitespace; a special token's string (``"[BOS]"``) encodes to its id;
    a word outside the vocabulary raises :class:`UnknownTokenError` (it is never mapped to
    ``[UNK]`` silently).
    """

    PAD, CLS, MASK, EOS, BOS, SEP, UNK = SPECIAL_TOKENS

    def __init__(self, words: Sequence[str]):
        if isinstance(words, str):
            raise TypeError("WordTokenizer(words) takes a sequence of words, not one string")
        words = [str(w) for w in words]
        for w in words:
            if not w or any(c.isspace() for c in w):
                raise ValueError(f"word {w!r} is empty or contains whitespace; words are split on whitespace")
        clash = sorted(set(words) & set(SPECIAL_TOKENS))
        if clash:
            raise ValueError(f"words {clash} clash with special tokens {list(SPECIAL_TOKENS)}")
        seen: set[str] = set()
        dups: list[str] = []
        for w in words:
            if w in seen and w not in dups:
                dups.append(w)
            seen.add(w)
        if dups:
            raise ValueError(f"duplicate words in vocabulary: {dups}")
        self._words: tuple[str, ...] = tuple(words)
        self._id_to_token: tuple[str, ...] = SPECIAL_TOKENS + self._words
        self._token_to_id: dict[str, int] = {t: i for i, t in enumerate(self._id_to_token)}
        self._special_ids = frozenset(range(len(SPECIAL_TOKENS)))

    # -- ids -------------------------------------------------------------------------------

    @property
    def words(self) -> tuple[str, ...]:
        """The non-special words, in id order (the first has id 7)."""
        return self._words

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    @property
    def pad_token_id(self) -> int:
        return 0

    @property
    def cls_token_id(self) -> int:
        return 1

    @property
    def mask_token_id(self) -> int:
        return 2

    @property
    def eos_token_id(self) -> int:
        return 3

    @property
    def bos_token_id(self) -> int:
        return 4

    @property
    def sep_token_id(self) -> int:
        return 5

    @property
    def unk_token_id(self) -> int:
        return 6

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    def token_to_id(self, token: str) -> int:
        try:
            return self._token_to_id[token]
        except KeyError:
            raise UnknownTokenError(
                f"unknown word {token!r}; {self._vocab_description()}", [token], [0]
            ) from None

    def id_to_token(self, token_id: int) -> str:
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(self._bad_id_message(token_id))
        return self._id_to_token[token_id]

    # -- encode / decode -------------------------------------------------------------------

    def encode(self, text: str, *, context: str = "text") -> list[int]:
        """Ids of the whitespace-separated words of ``text``.

        ``context`` only names the text in error messages (e.g. ``"prompt"``).
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        table = self._token_to_id
        out: list[int] = []
        bad: list[tuple[int, str]] = []
        for pos, word in enumerate(text.split()):
            i = table.get(word)
            if i is None:
                bad.append((pos, word))
            else:
                out.append(i)
        if bad:
            what = ", ".join(f"{w!r} at position {p}" for p, w in bad[:10])
            if len(bad) > 10:
                what += f", ... ({len(bad)} unknown in all)"
            noun = "word" if len(bad) == 1 else "words"
            raise UnknownTokenError(
                f"unknown {noun} {what} in {context}; {self._vocab_description()}",
                [w for _, w in bad],
                [p for p, _ in bad],
            )
        return out

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Words of ``ids`` joined by single spaces; special ids dropped if ``skip_special_tokens``."""
        vocab = self._id_to_token
        n = len(vocab)
        words: list[str] = []
        for i in _as_int_list(ids):
            if not 0 <= i < n:
                raise ValueError(self._bad_id_message(i))
            if skip_special_tokens and i in self._special_ids:
                continue
            words.append(vocab[i])
        return " ".join(words)

    def encode_batch(self, texts: Sequence[str], *, context: str = "text") -> list[list[int]]:
        return [self.encode(t, context=context) for t in texts]

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special_tokens: bool = True) -> list[str]:
        if hasattr(batch, "tolist"):
            batch = batch.tolist()
        return [self.decode(ids, skip_special_tokens=skip_special_tokens) for ids in batch]

    # -- (de)serialisation -----------------------------------------------------------------

    def spec(self) -> dict:
        return {"kind": "word", "words": list(self._words)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WordTokenizer):
            return NotImplemented
        return self._words == other._words

    def __hash__(self) -> int:
        return hash(("word", self._words))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"WordTokenizer({self.vocab_size} tokens: {len(SPECIAL_TOKENS)} special + {len(self._words)} words)"

    # -- messages --------------------------------------------------------------------------

    def _vocab_description(self) -> str:
        toks = self._id_to_token
        if len(toks) <= _MAX_LISTED_WORDS:
            listed = " ".join(toks)
        else:
            half = _MAX_LISTED_WORDS // 2
            listed = " ".join(toks[:half]) + " ... " + " ".join(toks[-half:])
        return f"this tokenizer knows {len(toks)} words: {listed}"

    def _bad_id_message(self, token_id: int) -> str:
        return f"token id {token_id} is out of range for this tokenizer (valid ids: 0..{self.vocab_size - 1})"


# -- building from a spec --------------------------------------------------------------------

def _sentencepiece(spec: Mapping[str, Any]) -> Tokenizer:
    from .sentencepiece_tokenizer import sentencepiece_from_spec  # sentencepiece loads only when used

    return sentencepiece_from_spec(spec)


def _hf(spec: Mapping[str, Any]) -> Tokenizer:
    from .hf_tokenizer import hf_tokenizer_from_spec

    return hf_tokenizer_from_spec(spec)


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], Tokenizer]] = {
    "word": lambda spec: WordTokenizer(spec["words"]),
    "sentencepiece": _sentencepiece,
    "hf": _hf,
}


def register_tokenizer_kind(kind: str, builder: Callable[[Mapping[str, Any]], Tokenizer]) -> None:
    """Make :func:`tokenizer_from_spec` understand ``{"kind": kind, ...}`` specs."""
    if kind in _BUILDERS:
        raise ValueError(f"tokenizer kind {kind!r} is already registered")
    _BUILDERS[kind] = builder


def tokenizer_from_spec(spec: Mapping[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from what its :meth:`~Tokenizer.spec` returned."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"a tokenizer spec is a mapping, got {type(spec).__name__}")
    kind = spec.get("kind")
    builder = _BUILDERS.get(kind)  # type: ignore[arg-type]
    if builder is None:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known kinds: {sorted(_BUILDERS)}")
    try:
        return builder(spec)
    except KeyError as e:
        raise ValueError(f"tokenizer spec of kind {kind!r} lacks the key {e.args[0]!r}") from None
